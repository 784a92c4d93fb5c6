"""The four cache/database races, each replayed step by step: first with plain cache-aside,
showing the stale result, then with kvorum's fix, showing it cannot happen.

The database is SQLite. Each race is an explicit interleaving of two actors; where the actors
are threads, `threading.Event`s hand the turn from one to the other, so no step depends on timing.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest


sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import Column, Integer, String, create_engine  # noqa: E402
from sqlalchemy.orm import Session, declarative_base  # noqa: E402

from kvorum.client.sqlalchemy import CacheSync  # noqa: E402

STEP_TIMEOUT_S = 10


@pytest.fixture
def db(tmp_path):
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, version INTEGER)")
    conn.execute("INSERT INTO item VALUES (1, 'v1', 1)")
    yield conn
    conn.close()


def db_name(db) -> bytes:
    return db.execute("SELECT name FROM item WHERE id = 1").fetchone()[0].encode()


def in_turns(first, second, first_resumes):
    """Run `first` in a thread until it waits on `handoff`, then `second`, then let `first` finish.

    `first(handoff, resume)` must call `handoff.set(); resume.wait()` at its midpoint.
    """
    handoff, resume = threading.Event(), threading.Event()
    errors = []

    def run_first():
        try:
            first(handoff, resume)
        except BaseException as error:  # reported to the test thread below
            errors.append(error)
            handoff.set()

    thread = threading.Thread(target=run_first)
    thread.start()
    assert handoff.wait(STEP_TIMEOUT_S)
    second()
    resume.set()
    thread.join(STEP_TIMEOUT_S)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    first_resumes()


# -- 1. reader/writer: a reader that missed sets an old value after a writer's update -----------

def reader_writer_race(db, cache, reader_sets):
    """Reader misses and reads the row; writer updates the row and deletes the key; reader sets."""

    def reader(handoff, resume):
        found = reader_sets["miss"]()
        assert found is None or not found.hit
        reader_sets["row"] = db_name(db)  # v1
        handoff.set()
        assert resume.wait(STEP_TIMEOUT_S)
        reader_sets["stored"] = reader_sets["set"](found, reader_sets["row"])

    def writer():
        db.execute("UPDATE item SET name = 'v2', version = 2 WHERE id = 1")
        cache.delete("item:1")

    in_turns(reader, writer, lambda: None)
    return reader_sets


def test_reader_writer_race_plain_cache_aside_caches_the_old_row(node, client_factory, db):
    cache = client_factory()
    steps = {"miss": lambda: cache.get("item:1"),
             "set": lambda found, value: cache.set("item:1", value)}
    reader_writer_race(db, cache, steps)
    assert db_name(db) == b"v2"
    assert cache.get("item:1") == b"v1"  # stale, and stays so until the next write or expiry


def test_reader_writer_race_lease_refuses_the_stale_set(node, client_factory, db):
    cache = client_factory()
    steps = {"miss": lambda: cache.lease_get("item:1"),
             "set": lambda found, value: cache.lease_set("item:1", value, found.token)}
    reader_writer_race(db, cache, steps)
    assert steps["stored"] is False  # the writer's delete voided the reader's lease
    assert cache.get("item:1") is None
    assert cache.get_or_load("item:1", lambda: db_name(db)) == b"v2"
    assert cache.get("item:1") == b"v2"


def test_concurrent_misses_get_one_lease_the_others_wait(node, client_factory):
    a, b = client_factory(), client_factory()
    first, second = a.lease_get("hot"), b.lease_get("hot")
    assert first.lease and second.wait
    assert a.lease_set("hot", "loaded", first.token)
    assert b.lease_get("hot").hit and b.get("hot") == b"loaded"


def test_get_or_load_waiter_reads_what_the_lease_holder_stored(node, client_factory):
    holder, waiter = client_factory(), client_factory()
    loads = []

    def first(handoff, resume):
        found = holder.lease_get("hot")
        assert found.lease
        handoff.set()
        assert resume.wait(STEP_TIMEOUT_S)
        holder.lease_set("hot", "from-db", found.token)

    def second():
        assert waiter.lease_get("hot").wait  # told to wait, so it does not load

    in_turns(first, second, lambda: None)
    assert waiter.get_or_load("hot", lambda: loads.append(1) or "again") == b"from-db"
    assert loads == []


def test_get_or_load_many_threads_one_load(node, client_factory):
    loading, release = threading.Event(), threading.Event()
    loads = []

    def slow_source():
        loads.append(1)
        loading.set()
        assert release.wait(STEP_TIMEOUT_S)
        return "loaded"

    clients = [client_factory() for _ in range(4)]
    results = [None] * len(clients)

    def read(i):
        results[i] = clients[i].get_or_load("hot", slow_source)

    holder = threading.Thread(target=read, args=(0,))
    holder.start()
    assert loading.wait(STEP_TIMEOUT_S)  # client 0 holds the lease and is inside the source
    others = [threading.Thread(target=read, args=(i,)) for i in range(1, len(clients))]
    for t in others:
        t.start()  # each is told to WAIT, or finds the value if it comes after the set
    release.set()
    for t in [holder, *others]:
        t.join(STEP_TIMEOUT_S)
    assert loads == [1]
    assert results == ["loaded", b"loaded", b"loaded", b"loaded"]


# -- 2. writer/writer: two writers reach the cache in the opposite order to the database ---------

def writer_writer_race(db, write_cache):
    """W1 commits row version 2, W2 commits version 3; W2 writes the cache, then W1 does."""
    db.execute("UPDATE item SET name = 'w1', version = 2 WHERE id = 1")
    w1_row = (b"w1", 2)
    db.execute("UPDATE item SET name = 'w2', version = 3 WHERE id = 1")
    w2_row = (b"w2", 3)
    results = [write_cache(*w2_row), write_cache(*w1_row)]
    return results


def test_writer_writer_race_plain_set_keeps_the_older_row(node, client_factory, db):
    cache = client_factory()
    writer_writer_race(db, lambda value, version: cache.set("item:1", value))
    assert db_name(db) == b"w2"
    assert cache.get("item:1") == b"w1"  # stale


def test_writer_writer_race_ifnewer_refuses_the_older_row(node, client_factory, db):
    cache = client_factory()
    results = writer_writer_race(
        db, lambda value, version: cache.set_ifnewer("item:1", value, version))
    assert results == [True, False]
    assert cache.get("item:1") == b"w2"
    assert int(cache.execute_command("EXTVERSION", "item:1")) == 3


# -- 3 and 4. rollback, and read-before-commit, with SQLAlchemy ------------------------------------

Base = declarative_base()


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String)
    version = Column(Integer)


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'orm.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Item(id=1, name="v1", version=1))
        session.commit()
    yield engine
    engine.dispose()


def committed_name(engine) -> str:
    with Session(engine) as other:
        return other.get(Item, 1).name


def test_rollback_plain_cache_keeps_the_rolled_back_value(node, client_factory, engine):
    cache = client_factory()
    with Session(engine) as session:
        item = session.get(Item, 1)
        item.name, item.version = "never", 2
        session.flush()
        cache.set("item:1", item.name)
        session.rollback()
    assert committed_name(engine) == "v1"
    assert cache.get("item:1") == b"never"  # the cache holds a value the database never had


def test_rollback_cache_sync_writes_nothing(node, client_factory, engine):
    cache = client_factory()
    cache.set("item:1", "v1")
    with Session(engine) as session:
        sync = CacheSync(cache, session)
        item = session.get(Item, 1)
        item.name, item.version = "never", 2
        session.flush()
        sync.set_ifnewer(session, "item:1", item.name, item.version)
        sync.invalidate(session, "list:items")
        session.rollback()
        assert CacheSync.pending(session) == []
    assert cache.get("item:1") == b"v1"


def test_savepoint_rollback_turns_recorded_sets_into_invalidations(node, client_factory, engine):
    cache = client_factory()
    cache.set("item:1", "v1")
    with Session(engine) as session:
        sync = CacheSync(cache, session)
        savepoint = session.begin_nested()
        item = session.get(Item, 1)
        item.name, item.version = "inner", 2
        sync.set_ifnewer(session, "item:1", item.name, item.version)
        savepoint.rollback()
        session.commit()
    assert committed_name(engine) == "v1"
    assert cache.get("item:1") is None  # deleted, never set to the rolled-back "inner"


def read_before_commit(engine, cache, record_write):
    """Writer changes the row and records its cache write; a reader looks before the commit."""
    seen = {}
    with Session(engine) as session:
        item = session.get(Item, 1)
        item.name, item.version = "v2", 2
        session.flush()
        record_write(session, item)
        seen["cache"] = cache.get("item:1")
        seen["db"] = committed_name(engine)
        session.commit()
    seen["after"] = cache.get("item:1")
    return seen


def test_read_before_commit_plain_serves_the_uncommitted_value(node, client_factory, engine):
    cache = client_factory()
    cache.set("item:1", "v1")
    seen = read_before_commit(engine, cache, lambda session, item: cache.set("item:1", item.name))
    assert seen["db"] == "v1" and seen["cache"] == b"v2"  # the cache is ahead of the database


def test_read_before_commit_cache_sync_applies_after_commit(node, client_factory, engine):
    cache = client_factory("strict")
    cache.set("item:1", "v1")
    sync = CacheSync(cache, Session)
    try:
        seen = read_before_commit(
            engine, cache,
            lambda session, item: sync.set_ifnewer(session, "item:1", item.name, item.version))
    finally:
        sync.remove()
    assert seen == {"db": "v1", "cache": b"v1", "after": b"v2"}
