"""The cluster secret over loopback sockets: peers that hold it talk, everyone else is refused and logged.

The rules themselves are tested sans-I/O in test_peer_frames; these tests check
that the transport draws fresh nonces, writes each handshake reply, delivers
nothing before both sides proved the secret, and logs every refusal.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from kvorum.server.peer_frames import (
    NONCE_BYTES,
    PROOF_BYTES,
    PROTOCOL_VERSION,
    SECRET_MISMATCH,
    SECRET_MISSING,
    SECRET_UNEXPECTED,
    Batch,
    Challenge,
    Challenged,
    Connection,
    FrameDecoder,
    Hello,
    Proof,
    Refuse,
    Role,
    Welcome,
    encode_frame,
)
from kvorum.server.peer_transport import PeerTransport
from kvorum.server.peers import SecretError, load_cluster_secret
from test_peer_transport import WAIT_S, LogWatch, Node, mesh, run

SECRET = b"correct horse battery staple"
OTHER_SECRET = b"incorrect horse battery staple"


async def read_frames(reader: asyncio.StreamReader, decoder: FrameDecoder, count: int) -> list:
    frames: list = []
    while len(frames) < count:
        chunk = await asyncio.wait_for(reader.read(65536), WAIT_S)
        assert chunk, f"closed after {frames}"
        frames += decoder.feed(chunk)
    return frames


def test_three_nodes_sharing_a_secret_exchange_messages_both_ways() -> None:
    async def test() -> None:
        nodes = [Node(name, secret=SECRET) for name in "abc"]
        await mesh(*nodes)
        for sender in nodes:
            for receiver in nodes:
                if sender is not receiver:
                    sender.transport.send(receiver.transport.node_id, sender.transport.node_id.encode())
        for node in nodes:
            await node.received_count(2)
            assert sorted(node.received) == sorted(
                (other.transport.node_id, other.transport.node_id.encode()) for other in nodes if other is not node
            )
        for node in nodes:
            await node.transport.stop()

    run(test)


def test_a_node_with_another_secret_is_refused_and_both_sides_log_it_while_the_others_talk() -> None:
    async def test() -> None:
        a, b = Node("a", secret=SECRET), Node("b", secret=SECRET)
        await mesh(a, b)
        intruder = Node("x", secret=OTHER_SECRET)
        await intruder.transport.start()
        with LogWatch("refused this node") as dialer_log, LogWatch("refused connection") as acceptor_log:
            intruder.transport.set_peers({"b": b.transport.address})
            intruder.transport.send("b", b"a vote that must never be counted")
            await asyncio.wait_for(dialer_log.event.wait(), WAIT_S)
            await asyncio.wait_for(acceptor_log.event.wait(), WAIT_S)
        assert SECRET_MISMATCH in dialer_log.messages[0]
        assert SECRET_MISMATCH in acceptor_log.messages[0] and "'x'" in acceptor_log.messages[0]
        a.transport.send("b", b"still welcome")
        await b.received_count(1)
        assert b.received == [("a", b"still welcome")]
        assert b.transport.stats.handshakes_refused >= 1
        assert intruder.transport.peer_stats("b").connects == 0
        for node in (a, b, intruder):
            await node.transport.stop()

    run(test)


@pytest.mark.parametrize(
    "dialer_secret, acceptor_secret, reason",
    [(b"", SECRET, SECRET_MISSING), (SECRET, b"", SECRET_UNEXPECTED)],
    ids=["dialer-without", "acceptor-without"],
)
def test_a_node_with_a_secret_and_one_without_are_refused_with_a_reason_on_both_sides(
    dialer_secret, acceptor_secret, reason
) -> None:
    async def test() -> None:
        a, b = Node("a", secret=dialer_secret), Node("b", secret=acceptor_secret)
        await a.transport.start()
        await b.transport.start()
        with LogWatch("refused this node") as dialer_log, LogWatch("refused connection") as acceptor_log:
            a.transport.set_peers({"b": b.transport.address})
            a.transport.send("b", b"must not arrive")
            await asyncio.wait_for(dialer_log.event.wait(), WAIT_S)
            await asyncio.wait_for(acceptor_log.event.wait(), WAIT_S)
        assert reason in dialer_log.messages[0] and reason in acceptor_log.messages[0]
        assert b.received == []
        await a.transport.stop()
        await b.transport.stop()

    run(test)


def test_a_recorded_handshake_replayed_on_a_new_connection_is_refused() -> None:
    async def test() -> None:
        b = Node("b", secret=SECRET)
        await b.transport.start()
        # A genuine member's handshake and first batch, recorded off the wire.
        dialer = Connection(Role.DIALER, "a", "c1", "b", secret=SECRET, nonce=os.urandom(NONCE_BYTES))
        reader, writer = await asyncio.open_connection(*b.transport.address)
        decoder = FrameDecoder()
        recorded = dialer.start()
        writer.write(recorded)
        (challenge,) = await read_frames(reader, decoder, 1)
        (challenged,) = dialer.receive_data(encode_frame(challenge))
        assert isinstance(challenged, Challenged)
        writer.write(challenged.reply)
        (welcome,) = await read_frames(reader, decoder, 1)
        assert isinstance(dialer.receive_data(encode_frame(welcome))[0], Welcome)
        batch = dialer.encode_batch([b"genuine"])
        writer.write(batch)
        recorded += challenged.reply + batch
        await b.received_count(1)
        writer.close()
        await writer.wait_closed()
        # The same bytes later, on a new connection: the acceptor's nonce has changed.
        with LogWatch("refused connection") as acceptor_log:
            reader, writer = await asyncio.open_connection(*b.transport.address)
            writer.write(recorded)
            answer = await asyncio.wait_for(reader.read(), WAIT_S)
            await asyncio.wait_for(acceptor_log.event.wait(), WAIT_S)
        frames = FrameDecoder().feed(answer)
        assert type(frames[0]) is Challenge and frames[0] != challenge
        assert frames[1:] == [Refuse(SECRET_MISMATCH)]
        assert b.received == [("a", b"genuine")]
        writer.close()
        await writer.wait_closed()
        await b.transport.stop()

    run(test)


def test_a_dialer_sends_nothing_to_an_impostor_on_its_peers_address() -> None:
    """A listener without the secret cannot prove itself, so it gets no consensus message."""

    async def test() -> None:
        received: list = []
        handshakes = asyncio.Event()

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = FrameDecoder()
            try:
                (hello,) = await read_frames(reader, decoder, 1)
                assert isinstance(hello, Hello) and len(hello.nonce) == NONCE_BYTES
                writer.write(encode_frame(Challenge(os.urandom(NONCE_BYTES))))
                (proof,) = await read_frames(reader, decoder, 1)
                assert isinstance(proof, Proof)
                writer.write(encode_frame(Welcome(PROTOCOL_VERSION, "b", b"\0" * PROOF_BYTES)))
                while chunk := await reader.read(65536):
                    received.extend(decoder.feed(chunk))
            except (ConnectionError, AssertionError):
                pass
            finally:
                handshakes.set()
                writer.close()

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        a = Node("a", secret=SECRET)
        await a.transport.start()
        with LogWatch("did not prove the cluster secret") as dialer_log:
            a.transport.set_peers({"b": server.sockets[0].getsockname()[:2]})
            a.transport.send("b", b"AppendEntries for the real b only")
            await asyncio.wait_for(dialer_log.event.wait(), WAIT_S)
            await asyncio.wait_for(handshakes.wait(), WAIT_S)
        assert not any(isinstance(frame, Batch) for frame in received)
        stats = a.transport.peer_stats("b")
        assert stats.connects == 0 and stats.messages_sent == 0 and stats.queue_messages == 1
        await a.transport.stop()
        server.close()
        await server.wait_closed()

    run(test)


@pytest.mark.parametrize("secret", [b"short", b"x" * 4097])
def test_a_secret_outside_its_limits_is_rejected(secret: bytes) -> None:
    with pytest.raises(ValueError, match="cluster secret"):
        PeerTransport("a", "c1", ("127.0.0.1", 0), {}, lambda *_: None, secret=secret)




def test_the_secret_file_loses_one_trailing_newline_and_nothing_else(tmp_path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b" \n")
    assert load_cluster_secret("", str(path)) == SECRET + b" "
    path.write_bytes(SECRET + b"\r\n")
    assert load_cluster_secret("", str(path)) == SECRET
    assert load_cluster_secret(SECRET.decode(), "") == SECRET
    assert load_cluster_secret("", "") == b""


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"\n", "is empty"), (b"short\n", "16 to 4096"), (b"x" * 4097, "16 to 4096")],
)
def test_an_unusable_secret_file_is_an_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(SecretError, match=message):
        load_cluster_secret("", str(path))
