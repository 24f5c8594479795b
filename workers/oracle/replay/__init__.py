"""``hodlai replay``: re-run a recorded request and check its trace, its CID and its answer."""
