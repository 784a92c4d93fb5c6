"""Parts of bench/cluster_compare and bench/failover: processes, load generation, one module per system.

- procs:             starting and stopping server processes, free ports, CPU accounting
- latency:           latency samples and their percentiles
- load:              the asyncio load generator (N writers for a warm-up and a measured window)
- http1:             a minimal asyncio HTTP/1.1 keep-alive client (for etcd's JSON gateway)
- resp:              one-shot RESP commands for setting clusters up
- redis_writer:      the redis-py writer shared by kvorum and the PySyncObj front end
- etcd_cluster:      a 3-member etcd cluster and its writer
- kvorum_cluster:    a 3-node kvorum cluster and its redis-py writer
- pysyncobj_cluster: 3 PySyncObj processes (pysyncobj_node) and their redis-py writer
- node_view:         who a node says leads, the same for every system (bench/failover polls it)
- counter_writer:    bench/failover's writer thread (RedisCluster for kvorum, HTTP for etcd) and its log
"""
