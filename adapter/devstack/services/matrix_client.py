"""A small Matrix client-server API driver for the e2e tier, on the stdlib only.

It covers what a test needs to make a real Synapse write every replicated stream:
registration (``m.login.dummy`` after the first 401, or the shared-secret admin API),
login with a chosen device ID, rooms, messages, typing, receipts, presence, account
data and tags, to-device messages, device and profile changes, push rules, and
``/sync`` long-polls in a background thread (:class:`SyncLoop`). Two traffic
scripts build on it: :class:`MatrixTraffic` (two users, one room, for the demo) and
:class:`RoomsTraffic` (several users in several rooms, riding out faults).

Routing matters with a worker: typing must go to the main process (a generic
worker answers 500, "not typing writer"), and only ``/sync`` served by the worker
makes Synapse publish ``USER_SYNC`` and ``USER_IP``. :meth:`MatrixClient.on` gives a
copy of a logged-in client aimed at another process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["MatrixClient", "MatrixError", "MatrixTraffic", "RoomsTraffic", "SyncLoop"]

_API = "/_matrix/client/v3"
_USER_AGENT = "synkafka-e2e/1"
_txn_ids = itertools.count(1)


class MatrixError(Exception):
    """A request answered with an HTTP error.

    Attributes:
        status: the HTTP status.
        errcode: Matrix ``errcode`` (``M_FORBIDDEN``...), or ``""``.
        body: the decoded JSON body (``{}`` if it was not JSON).
    """

    def __init__(self, method: str, path: str, status: int, body: dict[str, Any]):
        self.status = status
        self.errcode = str(body.get("errcode", ""))
        self.body = body
        super().__init__(f"{method} {path} -> {status} {self.errcode}: {body}")


def _q(value: str) -> str:
    return quote(value, safe="")


def _txn() -> str:
    return f"e2e{next(_txn_ids)}"


@dataclass(frozen=True)
class MatrixClient:
    """One user's session against one Synapse process.

    Attributes:
        base_url: ``http://127.0.0.1:<port>`` of the process to talk to.
        access_token: set by :meth:`register`, :meth:`login` and friends.
        user_id: the logged-in user's ID.
        device_id: the session's device ID.
        timeout_s: socket timeout per request (long-polls add their own wait).
    """

    base_url: str
    access_token: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    timeout_s: float = 30.0

    # -- plumbing --------------------------------------------------------------------

    def on(self, base_url: str) -> MatrixClient:
        """Return this session aimed at another process (for example the worker)."""
        return replace(self, base_url=base_url)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: dict[str, str] | None = None,
        auth: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the decoded JSON answer.

        Args:
            method: ``GET``, ``PUT``, ``POST``...
            path: absolute path (``/_matrix/...``); query strings go in ``query``.
            body: JSON body, if any.
            query: query parameters.
            auth: send the access token.
            timeout_s: socket timeout; default :attr:`timeout_s`.

        Raises:
            MatrixError: the server answered with an HTTP error status.
        """
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"User-Agent": _USER_AGENT}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            if self.access_token is None:
                raise ValueError(f"{method} {path} needs a logged-in client")
            headers["Authorization"] = f"Bearer {self.access_token}"
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            url, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - http://127.0.0.1 only
                req, timeout=timeout_s or self.timeout_s
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err_body = json.loads(raw) if raw else {}
            except ValueError:
                err_body = {"raw": raw.decode("utf-8", "replace")}
            raise MatrixError(method, path, exc.code, err_body) from None
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    def _logged_in(self, answer: dict[str, Any]) -> MatrixClient:
        return replace(
            self,
            access_token=answer["access_token"],
            user_id=answer["user_id"],
            device_id=answer.get("device_id"),
        )

    def _me(self) -> str:
        if self.user_id is None:
            raise ValueError("needs a logged-in client")
        return _q(self.user_id)

    # -- accounts --------------------------------------------------------------------

    def register(
        self, username: str, password: str, *, device_id: str | None = None
    ) -> MatrixClient:
        """Register with the ``m.login.dummy`` flow and return the logged-in session.

        The first ``POST /register`` answers 401 with a ``session``; the second
        completes the dummy stage in it. Needs ``enable_registration`` and
        ``enable_registration_without_verification``.
        """
        body: dict[str, Any] = {"username": username, "password": password}
        if device_id is not None:
            body["device_id"] = device_id
        try:
            answer = self.request("POST", f"{_API}/register", body, auth=False)
        except MatrixError as exc:
            if exc.status != 401 or "session" not in exc.body:
                raise
            body["auth"] = {"type": "m.login.dummy", "session": exc.body["session"]}
            answer = self.request("POST", f"{_API}/register", body, auth=False)
        return self._logged_in(answer)

    def register_with_shared_secret(
        self, username: str, password: str, shared_secret: str, *, admin: bool = False
    ) -> MatrixClient:
        """Register through ``/_synapse/admin/v1/register`` (what ``register_new_matrix_user`` does).

        The MAC is HMAC-SHA1 over ``nonce NUL user NUL password NUL admin|notadmin``
        keyed with ``registration_shared_secret``.
        """
        path = "/_synapse/admin/v1/register"
        nonce = self.request("GET", path, auth=False)["nonce"]
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [
                    nonce.encode(),
                    username.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            )
        )
        body = {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        return self._logged_in(self.request("POST", path, body, auth=False))

    def login(
        self, username: str, password: str, *, device_id: str | None = None
    ) -> MatrixClient:
        """Log in with a password (``m.login.password``) and return the session."""
        body: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        }
        if device_id is not None:
            body["device_id"] = device_id
        return self._logged_in(self.request("POST", f"{_API}/login", body, auth=False))

    # -- rooms and events ------------------------------------------------------------

    def create_room(
        self,
        *,
        name: str | None = None,
        invite: tuple[str, ...] = (),
        preset: str = "private_chat",
    ) -> str:
        """Create a room and return its ID."""
        body: dict[str, Any] = {"preset": preset, "invite": list(invite)}
        if name is not None:
            body["name"] = name
        return str(self.request("POST", f"{_API}/createRoom", body)["room_id"])

    def invite(self, room_id: str, user_id: str) -> None:
        """Invite ``user_id`` into the room."""
        self.request("POST", f"{_API}/rooms/{_q(room_id)}/invite", {"user_id": user_id})

    def join(self, room_id: str) -> str:
        """Join a room (by ID or alias) and return its ID."""
        return str(self.request("POST", f"{_API}/join/{_q(room_id)}", {})["room_id"])

    def send_message(self, room_id: str, text: str) -> str:
        """Send an ``m.room.message`` (``m.text``) and return its event ID."""
        path = f"{_API}/rooms/{_q(room_id)}/send/m.room.message/{_txn()}"
        answer = self.request("PUT", path, {"msgtype": "m.text", "body": text})
        return str(answer["event_id"])

    def set_typing(
        self, room_id: str, typing: bool, *, timeout_ms: int = 30000
    ) -> None:
        """Start or stop typing; send this to the main process (the typing writer)."""
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout_ms
        self.request("PUT", f"{_API}/rooms/{_q(room_id)}/typing/{self._me()}", body)

    def send_receipt(
        self, room_id: str, event_id: str, receipt_type: str = "m.read"
    ) -> None:
        """Send a receipt for ``event_id``."""
        path = f"{_API}/rooms/{_q(room_id)}/receipt/{_q(receipt_type)}/{_q(event_id)}"
        self.request("POST", path, {})

    def set_read_markers(
        self, room_id: str, fully_read: str, read: str | None = None
    ) -> None:
        """Move the ``m.fully_read`` marker (account data) and optionally ``m.read``."""
        body = {"m.fully_read": fully_read}
        if read is not None:
            body["m.read"] = read
        self.request("POST", f"{_API}/rooms/{_q(room_id)}/read_markers", body)

    # -- per-user state --------------------------------------------------------------

    def set_presence(self, presence: str, status_msg: str | None = None) -> None:
        """Set ``online``/``unavailable``/``offline`` with an optional status."""
        body: dict[str, Any] = {"presence": presence}
        if status_msg is not None:
            body["status_msg"] = status_msg
        self.request("PUT", f"{_API}/presence/{self._me()}/status", body)

    def set_account_data(self, event_type: str, content: dict[str, Any]) -> None:
        """Write global account data of ``event_type``."""
        path = f"{_API}/user/{self._me()}/account_data/{_q(event_type)}"
        self.request("PUT", path, content)

    def set_room_tag(self, room_id: str, tag: str, order: float | None = None) -> None:
        """Tag a room (stored as room account data ``m.tag``)."""
        body: dict[str, Any] = {} if order is None else {"order": order}
        path = f"{_API}/user/{self._me()}/rooms/{_q(room_id)}/tags/{_q(tag)}"
        self.request("PUT", path, body)

    def send_to_device(
        self, event_type: str, messages: dict[str, dict[str, dict[str, Any]]]
    ) -> None:
        """Send to-device messages: ``{user_id: {device_id: content}}``."""
        path = f"{_API}/sendToDevice/{_q(event_type)}/{_txn()}"
        self.request("PUT", path, {"messages": messages})

    def set_device_display_name(self, device_id: str, display_name: str) -> None:
        """Rename one of this user's devices."""
        self.request(
            "PUT",
            f"{_API}/devices/{_q(device_id)}",
            {"display_name": display_name},
        )

    def set_displayname(self, displayname: str) -> None:
        """Change the profile's display name."""
        self.request(
            "PUT",
            f"{_API}/profile/{self._me()}/displayname",
            {"displayname": displayname},
        )

    def put_push_rule(self, kind: str, rule_id: str, rule: dict[str, Any]) -> None:
        """Add or replace a global push rule of ``kind`` (``content``, ``override``...)."""
        path = f"{_API}/pushrules/global/{_q(kind)}/{_q(rule_id)}"
        self.request("PUT", path, rule)

    # -- sync ------------------------------------------------------------------------

    def sync(self, since: str | None = None, *, timeout_ms: int = 0) -> dict[str, Any]:
        """One ``/sync``; with ``timeout_ms`` the server holds it until news or timeout."""
        query = {"timeout": str(timeout_ms)}
        if since is not None:
            query["since"] = since
        return self.request(
            "GET",
            f"{_API}/sync",
            query=query,
            timeout_s=self.timeout_s + timeout_ms / 1000,
        )


class SyncLoop:
    """``/sync`` long-polls in a background thread, as a connected client does.

    A user counts as syncing (``USER_SYNC ... start``) from its first ``/sync`` on a
    worker until the loop stops. By default errors end the loop and are re-raised by
    :meth:`stop`; with ``keep_going`` they are counted in :attr:`errors` and the loop
    tries again after ``retry_s`` (a client rides out a restart of Redis or of a
    worker the same way).

    Args:
        client: the logged-in session, aimed at the process that serves ``/sync``.
        timeout_ms: long-poll time per request; :meth:`stop` waits for at most one.
        keep_going: retry after errors instead of ending.
        retry_s: pause before a retry with ``keep_going``.
    """

    def __init__(
        self,
        client: MatrixClient,
        *,
        timeout_ms: int = 1000,
        keep_going: bool = False,
        retry_s: float = 0.5,
    ) -> None:
        self.client = client
        self.timeout_ms = timeout_ms
        self.keep_going = keep_going
        self.retry_s = retry_s
        self.syncs = 0
        self.errors = 0
        self.next_batch: str | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"sync {client.user_id}", daemon=True
        )

    def start(self) -> SyncLoop:
        """Start polling; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self.client.sync(self.next_batch, timeout_ms=self.timeout_ms)
            except (MatrixError, OSError) as exc:
                if not self.keep_going:
                    self._error = exc
                    return
                self.errors += 1
                self._stop.wait(self.retry_s)  # not a busy loop against a dead server
                continue
            except BaseException as exc:  # noqa: BLE001 - handed to the test by stop()
                self._error = exc
                return
            self.next_batch = answer["next_batch"]
            self.syncs += 1

    def stop(self) -> None:
        """Stop after the request in flight; re-raise the loop's error, if any."""
        self._stop.set()
        self._thread.join(timeout=self.client.timeout_s + self.timeout_ms / 1000)
        if self._error is not None:
            raise self._error


class MatrixTraffic:
    """Scripted users for ``synkafka demo --with-synapse``: one room, many streams.

    :meth:`set_up` registers alice and bob, makes a room both are in and starts bob's
    ``/sync`` long-polls on the worker (so the worker publishes ``USER_SYNC``).
    Each :meth:`step` sends one message and, in turn, one more action: typing,
    a receipt, presence, account data, a to-device message, a push rule.

    Args:
        client_url: the main process (everything but ``/sync`` goes there).
        sync_url: the process that serves ``/sync`` (the worker).
        shared_secret: Synapse's ``registration_shared_secret``.
    """

    _ACTIONS = (
        "typing",
        "receipts",
        "presence",
        "account_data",
        "to_device",
        "push_rules",
    )

    def __init__(self, client_url: str, sync_url: str, shared_secret: str) -> None:
        self._client_url = client_url
        self._sync_url = sync_url
        self._secret = shared_secret
        self._alice: MatrixClient | None = None
        self._bob: MatrixClient | None = None
        self._room = ""
        self._last_event = ""
        self._sync: SyncLoop | None = None
        self.actions: dict[str, int] = {}
        """Requests made per kind (``messages``, ``typing``...)."""

    @property
    def syncs(self) -> int:
        """``/sync`` requests bob made on the worker."""
        return self._sync.syncs if self._sync is not None else 0

    def _count(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def set_up(self) -> None:
        """Register the users, make the room, start the syncs on the worker."""
        server = MatrixClient(self._client_url)
        alice = server.register_with_shared_secret("alice", "pass-alice", self._secret)
        bob = server.register_with_shared_secret("bob", "pass-bob", self._secret)
        if alice.user_id is None or bob.user_id is None:
            raise ValueError("registration answered without a user ID")
        self._room = alice.create_room(name="synkafka demo", invite=(bob.user_id,))
        bob.join(self._room)
        self._alice, self._bob = alice, bob
        sync_client = bob.on(self._sync_url)
        first = sync_client.sync(timeout_ms=0)
        self._sync = SyncLoop(sync_client, timeout_ms=1000)
        self._sync.next_batch = first["next_batch"]
        self._sync.start()
        self._count("register")
        self._count("register")

    def step(self, n: int) -> None:
        """One message, then the ``n``-th action of the cycle."""
        alice, bob = self._alice, self._bob
        if alice is None or bob is None:
            raise ValueError("call set_up() first")
        sender = alice if n % 2 == 0 else bob
        self._last_event = sender.send_message(self._room, f"demo message {n}")
        self._count("messages")
        kind = self._ACTIONS[n % len(self._ACTIONS)]
        if kind == "typing":
            bob.set_typing(self._room, n % 4 != 0)
        elif kind == "receipts":
            alice.send_receipt(self._room, self._last_event)
        elif kind == "presence":
            alice.set_presence("online" if n % 4 else "unavailable", f"demo {n}")
        elif kind == "account_data":
            alice.set_account_data("org.synkafka.demo", {"n": n})
        elif kind == "to_device":
            if bob.user_id is None:
                raise ValueError("call set_up() first")
            alice.send_to_device(
                "org.synkafka.demo.ping", {bob.user_id: {"*": {"n": n}}}
            )
        else:
            alice.put_push_rule(
                "content", f"demo{n}", {"pattern": f"demo{n}", "actions": ["notify"]}
            )
        self._count(kind)

    def close(self) -> None:
        """Stop the sync loop (errors of the loop are dropped: the run is over)."""
        if self._sync is not None:
            with contextlib.suppress(Exception):
                self._sync.stop()
            self._sync = None


class RoomsTraffic:
    """Several users in several rooms, writing every stream a user can write.

    :meth:`set_up` registers ``users`` users (``user0``...), has ``user0`` create
    ``rooms`` rooms with everyone invited, has the others join them, and starts one
    ``/sync`` long-poll loop per user on ``sync_url``. Each :meth:`step` sends one
    message and one more action, cycling through typing (on, then off), a receipt,
    the ``m.fully_read`` marker, global account data, a room tag, a to-device message
    to the next user, presence and a push rule.

    Steps never raise for an HTTP error or a refused connection: a request that fails
    (a persister or Redis is down) is counted in :attr:`failures` and the traffic
    goes on, as real clients would retry. :attr:`event_ids` holds the ID of every
    message Synapse accepted, so a test can look for each of them downstream.

    Args:
        client_url: the main process (everything but ``/sync`` goes there; typing
            must, since a generic worker is not the typing writer).
        sync_url: the process that serves ``/sync``.
        shared_secret: Synapse's ``registration_shared_secret``.
        users: how many users.
        rooms: how many rooms; every user is in every room.
    """

    ACTIONS = (
        "typing",
        "receipts",
        "read_markers",
        "account_data",
        "room_tags",
        "to_device",
        "presence",
        "push_rules",
    )
    """The actions :meth:`step` cycles through, one per step after its message."""

    def __init__(
        self,
        client_url: str,
        sync_url: str,
        shared_secret: str,
        *,
        users: int = 4,
        rooms: int = 12,
    ) -> None:
        if users < 2 or rooms < 1:
            raise ValueError("need at least 2 users and 1 room")
        self._client_url = client_url
        self._sync_url = sync_url
        self._secret = shared_secret
        self._n_users = users
        self._n_rooms = rooms
        self.users: list[MatrixClient] = []
        """The logged-in sessions on the main process."""
        self.room_ids: list[str] = []
        """The rooms, in creation order."""
        self.event_ids: list[str] = []
        """Every message Synapse accepted, in sending order."""
        self.actions: dict[str, int] = {}
        """Successful requests per kind (``messages``, ``typing``...)."""
        self.failures: dict[str, int] = {}
        """Failed requests per kind."""
        self._syncs: list[SyncLoop] = []
        self._last_event: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def syncs(self) -> int:
        """``/sync`` requests answered, over all users."""
        return sum(loop.syncs for loop in self._syncs)

    @property
    def sync_errors(self) -> int:
        """``/sync`` requests that failed (and were retried), over all users."""
        return sum(loop.errors for loop in self._syncs)

    @property
    def sync_loops(self) -> tuple[SyncLoop, ...]:
        """Each user's ``/sync`` loop, in the order of :attr:`users`."""
        return tuple(self._syncs)

    def _count(self, table: dict[str, int], kind: str) -> None:
        with self._lock:
            table[kind] = table.get(kind, 0) + 1

    def set_up(self) -> None:
        """Register the users, make the rooms, start every user's ``/sync`` loop.

        Raises:
            MatrixError: a request failed (set-up is not fault tolerant).
        """
        server = MatrixClient(self._client_url)
        for i in range(self._n_users):
            user = server.register_with_shared_secret(
                f"user{i}", f"pass-user{i}", self._secret
            )
            if user.user_id is None:
                raise ValueError("registration answered without a user ID")
            self.users.append(user)
            self._count(self.actions, "register")
        owner, *others = self.users
        invite = tuple(u.user_id for u in others if u.user_id is not None)
        for i in range(self._n_rooms):
            room_id = owner.create_room(name=f"synkafka room {i}", invite=invite)
            for user in others:
                user.join(room_id)
            self.room_ids.append(room_id)
        for user in self.users:
            sync_client = user.on(self._sync_url)
            loop = SyncLoop(sync_client, timeout_ms=1000, keep_going=True)
            loop.next_batch = sync_client.sync(timeout_ms=0)["next_batch"]
            self._syncs.append(loop.start())

    def step(self, n: int) -> None:
        """Send the ``n``-th message, then the ``n``-th action of the cycle.

        The sender is user ``n mod users``; the room changes every ``users`` steps,
        so each room hears from every user.
        """
        if not self.users:
            raise ValueError("call set_up() first")
        user = self.users[n % len(self.users)]
        room_id = self.room_ids[(n // len(self.users)) % len(self.room_ids)]
        try:
            event_id = user.send_message(room_id, f"traffic message {n}")
        except (MatrixError, OSError):
            self._count(self.failures, "messages")
        else:
            with self._lock:
                self.event_ids.append(event_id)
                self._last_event[room_id] = event_id
            self._count(self.actions, "messages")
        kind = self.ACTIONS[(n // len(self.users)) % len(self.ACTIONS)]
        try:
            self._act(kind, n, user, room_id)
        except (MatrixError, OSError):
            self._count(self.failures, kind)
        else:
            self._count(self.actions, kind)

    def _act(self, kind: str, n: int, user: MatrixClient, room_id: str) -> None:
        last = self._last_event.get(room_id)
        peer = self.users[(n + 1) % len(self.users)]
        if kind == "typing":
            # Alternate on and off so the typing stream gets both kinds of rows.
            user.set_typing(room_id, (n // len(self.users)) % 2 == 0)
        elif kind == "receipts" and last is not None:
            user.send_receipt(room_id, last)
        elif kind == "read_markers" and last is not None:
            user.set_read_markers(room_id, fully_read=last)
        elif kind == "account_data":
            user.set_account_data("org.synkafka.traffic", {"n": n})
        elif kind == "room_tags":
            user.set_room_tag(room_id, "u.synkafka", order=(n % 100) / 100)
        elif kind == "to_device":
            if peer.user_id is None:
                raise ValueError("call set_up() first")
            user.send_to_device(
                "org.synkafka.traffic.ping", {peer.user_id: {"*": {"n": n}}}
            )
        elif kind == "presence":
            user.set_presence("online" if n % 3 else "unavailable", f"step {n}")
        elif kind == "push_rules":
            user.put_push_rule(
                "content",
                f"traffic{n % 7}",
                {"pattern": f"traffic{n}", "actions": ["notify"]},
            )

    def close(self) -> None:
        """Stop every ``/sync`` loop (the run is over: their errors are dropped).

        :attr:`syncs` and :attr:`sync_errors` keep their final counts.
        """
        for loop in self._syncs:
            with contextlib.suppress(Exception):
                loop.stop()
