"""A daemon thread that calls ``tick()`` every ``interval`` seconds until stopped (or until
``tick`` returns False): the base of the stall watchdog and the dropped-worker listener, which
define ``tick``."""
import threading


class Periodic:
    name = "periodic"

    def __init__(self, interval):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.interval):
            if self.tick() is False:
                return
