"""Test peers shared by the unit and the integration tests.

- :mod:`tests.peers.corpus`: the hostile/odd data set corpus (every form a sender may send).
- :mod:`tests.peers.rawpeer`: a raw-socket DICOM peer that sends exactly the bytes a test chooses.
- :mod:`tests.peers.scp`: the node's SCP in-process on a free loopback port, and a pynetdicom SCU.
- :mod:`tests.peers.node`: a node data folder with its SQLite queue (fixture bodies).
"""
