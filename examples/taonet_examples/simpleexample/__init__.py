"""simpleexample: a client that asks a server for a secret over a Tao channel.

* :mod:`.simpleserver`: provisions its identity (or unseals it), keeps its secret
  in the domain's secret server (``/simpleexample/secret``: made there on the first
  run, read at each start, followed by a watch when the operator rotates it), serves
  Tao channels and hands the secret only to a client the domain's guard allows to
  ``Read`` it.
* :mod:`.simpleclient`: provisions its identity (or unseals it), opens a channel to
  the server, asks for the secret.
* :mod:`.demo`: runs the domain service, the secret server, the server and the
  client on a soft Tao host in a local domain directory, then rotates the secret as
  the operator and revokes a live channel (``taonet demo``); :mod:`.hosted` runs
  them as child processes of a Linux host (``taonet demo --hosted``).
* :mod:`.upgrade` (``taonet demo --upgrade``): an upgrade that keeps its data.
  :mod:`.upgrade_v1` keeps a record under a content key; :mod:`.upgrade_v2` (other
  code, another name) gets the key by a disclosure directive of the policy key, from
  version 1 (the peer protocol) and from the secret server, then rotates it;
  :mod:`.upgrade_record` is the record both read.
"""
