"""DevConsul: the embedded server object used by `zedctl dev-consul` and the tests."""

from __future__ import annotations

import signal
import sys
import threading
from types import TracebackType

from .http import Api, _Server
from .persist import DataFile, DataFileError, Persister, load_into
from .store import Store


class DevConsul:
    """An in-process server speaking Consul's HTTP API.

    `start()` binds and serves in daemon threads; `stop()` shuts down and flushes the
    data file. Usable as a context manager. `port=0` picks a free port (see `address`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        acl_token: str | None = None,
        data: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.acl_token = acl_token
        self.data = data
        self.store = Store()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._persister: Persister | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            return self.host, self.port
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> DevConsul:
        """Bind and serve in the background; returns once the socket accepts connections.

        Raises OSError when the address cannot be bound and DataFileError when the data
        file cannot be loaded.
        """
        with self._lock:
            if self._httpd is not None:
                return self
            self._stopped.clear()
            datafile = DataFile(self.data) if self.data else None
            if datafile is not None:
                datafile.acquire()
                try:
                    load_into(self.store, datafile)
                    httpd = _Server((self.host, self.port), Api(self.store, self.acl_token))
                except BaseException:
                    datafile.release()
                    raise
            else:
                httpd = _Server((self.host, self.port), Api(self.store, self.acl_token))
            self.store.start()
            if datafile is not None:
                self._persister = Persister(self.store, datafile)
                self._persister.start()
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="dev-consul-http",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Shut down, close every socket and flush the data file. Idempotent."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
            persister, self._persister = self._persister, None
            self._stopped.set()
            if httpd is None:
                return
            self.store.close()  # wakes blocking queries: they answer at once
            if thread is not None and thread.is_alive():
                httpd.shutdown()
                thread.join(timeout=10)
            httpd.server_close()
            httpd.wait_idle(5.0)  # requests under way (woken queries too) answer first
            httpd.close_connections()
            if persister is not None:
                persister.stop()

    def serve_forever(self) -> None:
        """Serve in the foreground (the CLI): print one ready line, then run until
        SIGTERM/SIGINT (or stop() from another thread); exit cleanly either way."""
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
        except (OSError, DataFileError) as err:
            print(f"dev-consul: cannot start on {self.host}:{self.port}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"dev-consul listening on {self.url}", flush=True)
        try:
            while not stop.wait(0.5) and not self._stopped.is_set():
                pass
        finally:
            self.stop()

    def __enter__(self) -> DevConsul:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
