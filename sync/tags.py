"""Every MPI tag the sync rules use, in one table, so no two messages can share one.

The server protocol (EASGD and Downpour, ``sync/server.py``): a worker asks for the server's
values (FETCH), says it is done (DONE), or is done and wants the final values (DONE_FETCH); the
server answers with VALUES. CHECKPOINT (a folder) asks a server to write its part of a
checkpoint, SAVED answers it. DROPPED tells a worker the server dropped it (``sync/dropped.py``).
Then each rule's own messages, and the stop protocol (``sync/stop.py``): STOP tells the first
worker a rank was asked to stop, STOP_NOW tells the workers to, ARRIVE meets them before a
collective.
"""
# the server protocol
FETCH, DONE, DONE_FETCH, VALUES, CHECKPOINT, SAVED, DROPPED = 1, 2, 3, 4, 5, 6, 7
# EASGD: a worker's parameters for the elastic move
EASGD_EXCHANGE = 11
# Downpour: a worker's accrued gradient for one server's shard
DOWNPOUR_PUSH = 21
# gossip: GoSGD's mixing weight and parameters; Elastic Gossip's request and reply
GOSSIP_WEIGHT, GOSSIP_PARAMS, GOSSIP_REQUEST, GOSSIP_REPLY = 31, 32, 33, 34
# stopping (sync/stop.py)
STOP, STOP_NOW, ARRIVE = 41, 42, 43
