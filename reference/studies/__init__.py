"""Studies: runs of the harness over many cases or targets, apart from the library: the tolerance calibration,
the no-false-alarm run and the bug-zoo hunt (``parity zoo``)."""
