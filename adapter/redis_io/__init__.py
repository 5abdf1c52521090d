"""Redis I/O: the only package that imports redis-py."""

from adapter.redis_io.subscriber import RedisMessage, ReplicationSubscriber

__all__ = ["RedisMessage", "ReplicationSubscriber"]
