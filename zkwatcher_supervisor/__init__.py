"""Register supervisord programs in ZooKeeper while they are healthy."""

__version__ = "0.1.0"
