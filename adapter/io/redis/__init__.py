"""Redis I/O: the only package that imports redis-py."""

from adapter.io.redis.clients import RedisClients
from adapter.io.redis.subscriber import RedisMessage, ReplicationSubscriber

__all__ = ["RedisClients", "RedisMessage", "ReplicationSubscriber"]
