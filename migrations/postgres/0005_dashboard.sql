-- The dashboard's node page lists the heartbeats of one node.
CREATE INDEX heartbeats_node ON heartbeats (node, service);
