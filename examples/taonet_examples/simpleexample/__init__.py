"""simpleexample: a client that asks a server for a secret over a Tao channel.

* :mod:`.simpleserver`: provisions its identity (or unseals it), keeps a secret
  sealed to itself, serves Tao channels and hands the secret only to a client the
  domain's guard allows to ``Read`` it.
* :mod:`.simpleclient`: provisions its identity (or unseals it), opens a channel to
  the server, asks for the secret.
* :mod:`.demo`: runs the domain service, the server and the client on a soft Tao
  host in a local domain directory (``taonet demo``).
"""
