"""Fault suite: concurrent clients against a real 3-node cluster while a nemesis kills,
restarts and pauses nodes and cuts traffic between them; the recorded history must be
linearizable.

The clients (workload.py) are threads with plain redis-py connections (no retries of
their own): four record GET, SET and INCR ops on a few keys, and one pipelines
`SET q n; GET p; SET p <fresh>; GET p` and checks the order Redis gives one
connection. An op is sent again only after answers that prove it did not happen
(-MOVED, -CLUSTERDOWN, -TRYAGAIN, a refused dial); anything else makes its outcome
unknown.

The nemesis (nemesis.py), in a loop, one fault at a time: SIGKILL the leader and restart it
after a while; SIGSTOP a random node (sometimes the leader) and SIGCONT it
later; or cut traffic between nodes and heal it later. Every peer link goes
through netproxy's fault-injecting TCP proxy, so a cut is real TCP behaviour
(connections aborted, new dials black-holed or reset): the leader isolated
from both followers, a random 1|2 split, or a one-way cut (one directed link,
or everything the leader sends, or everything it receives). Clients keep
their direct connections, so they go on talking to a cut-off old leader. At
the end every node runs again and every link is healed, and one final
linearizable GET per key, which the checker holds to every acknowledged
write, proves nothing acknowledged was lost.

Faults are dealt from a shuffled deck holding each kind once, so even the
default run injects every kind. Duration: KVORUM_FAULT_SECONDS (default 30) of
faults, nemesis seed KVORUM_FAULT_SEED (default 7); the history is written to
the test's temporary directory as history.jsonl for `python -m kvorum.sim.linearizability`.
"""

from __future__ import annotations

import os
import time

import pytest

from nemesis import FAULTS, Nemesis, heal_everything
from workload import Workload

FAULT_S = float(os.environ.get("KVORUM_FAULT_SECONDS", "30"))
FAULT_SEED = int(os.environ.get("KVORUM_FAULT_SEED", "7"))  # the nemesis' choices
HEALED_S = 2.0  # clients keep running against the healed cluster


@pytest.mark.timeout(int(FAULT_S) + 240)
def test_history_under_kills_pauses_and_partitions_is_linearizable(net_cluster, tmp_path):
    cluster, proxy = net_cluster
    workload = Workload(cluster)
    nemesis = Nemesis(cluster, proxy, FAULTS, FAULT_SEED)
    workload.start()
    try:
        nemesis.run_for(FAULT_S)
        heal_everything(cluster, proxy)
        time.sleep(HEALED_S)
    finally:  # also when a node fails to come back: no thread outlives the test
        nemesis.stop()
        workload.stop()
    summary = workload.verify(tmp_path)
    print(f"fault suite: seed {FAULT_SEED}, {FAULT_S:.0f}s, {summary}, {nemesis.summary()}")
