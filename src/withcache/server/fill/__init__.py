"""Fills: bringing an artifact from its origin into the store, once however
many ask for it.

    fill.py       the Fill (a writer side for this package, a reader side for
                  everyone), the FillReader a client reads it through, and the
                  Outcomes a fill ends with
    manager.py    the queue, the workers, leases across hosts, single flight,
                  and `finish`: the one way a fill ends
    transfer.py   one fill's transfer from its origin (redirects, retries,
                  resume, room, checkpoints)
    progress.py   FillRow: a fill's record plus its live progress, as shown
"""
