"""The pool: transports to hosts (local, SSH), the remote agent client, placement facts."""
