"""Worker process set-up and heartbeats (a Dramatiq middleware).

Every worker process limits OpenCV to one thread (one process per core does
the parallel work), starts the page-time-limit watchdog (``watchdog.py``),
takes its turn at the recovery job (``recovery.py``) and keeps a
``WorkerHeartbeat`` row fresh, which ``/api/health`` reads to tell whether
any worker is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from dramatiq.middleware import Middleware

logger = logging.getLogger(__name__)


class WorkerSetup(Middleware):
    """cv2.setNumThreads(1) in each worker process, a short poll of the queue,
    and a heartbeat thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovery = None
        self._name = ""

    def after_process_boot(self, broker) -> None:
        try:
            import cv2

            cv2.setNumThreads(1)
        except ImportError:  # pragma: no cover - cv2 is a requirement
            pass

    def before_worker_boot(self, broker, worker) -> None:
        from django.conf import settings

        # An idle consumer polls Redis with a backoff up to the worker timeout
        # (1 s by default), so a new batch, its chunks or its finish waited up to
        # a second per step for an idle process. A short poll costs Redis one
        # small script call per 100 ms per process.
        if settings.OMR_WORKER_POLL_MS > 0:
            worker.worker_timeout = settings.OMR_WORKER_POLL_MS
        if settings.OMR_PROCESS_ROLE == "worker":
            warm_up_engine()

    def after_worker_boot(self, broker, worker) -> None:
        from django.conf import settings

        try:
            import cv2

            cv2.setNumThreads(1)
        except ImportError:  # pragma: no cover
            pass
        if settings.OMR_PROCESS_ROLE == "worker" and settings.OMR_SHEET_TIME_LIMIT > 0:
            from . import watchdog

            watchdog.enable()
        if settings.OMR_PROCESS_ROLE == "worker" and settings.OMR_RECOVERY_INTERVAL > 0:
            from .recovery import RecoveryThread

            self._recovery = RecoveryThread(settings.OMR_RECOVERY_INTERVAL, settings.OMR_RECOVERY_IDLE)
            self._recovery.start()
        interval = settings.OMR_HEARTBEAT_INTERVAL
        if interval <= 0:
            return
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="omr-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        if self._recovery is not None:
            self._recovery.stop()
            self._recovery = None
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            from django.db import connection

            from ..models import WorkerHeartbeat

            WorkerHeartbeat.objects.filter(name=self._name).delete()
            connection.close()
        except Exception as exc:  # shutting down anyway
            logger.warning("Could not remove heartbeat %s: %s", self._name, exc)

    def _beat(self, interval: float) -> None:
        from django.db import connection
        from django.utils import timezone

        from ..models import WorkerHeartbeat

        host, _, pid = self._name.rpartition(":")
        started = timezone.now()
        while not self._stop.is_set():
            try:
                # Rows of workers that died without saying goodbye (SIGKILL, a lost host).
                WorkerHeartbeat.objects.filter(beat_at__lt=timezone.now() - timedelta(hours=1)).delete()
                WorkerHeartbeat.objects.update_or_create(
                    name=self._name, defaults={"hostname": host, "pid": int(pid), "beat_at": timezone.now()},
                    create_defaults={"hostname": host, "pid": int(pid), "beat_at": timezone.now(),
                                     "started_at": started})
            except Exception as exc:  # the database may be restarting; try again next beat
                logger.warning("Heartbeat %s not written: %s", self._name, exc)
            finally:
                connection.close()
            self._stop.wait(interval)


def warm_up_engine() -> None:
    """Read one rendered sheet before the worker takes any message: the
    engine's imports and first-use set-up (OpenCV, the QR decoder, the
    built-in templates) cost about half a second of CPU per process, which
    the first batch after a start would otherwise pay in the middle of its
    reading. Never stops the worker from starting."""
    import time

    t0 = time.process_time()
    try:
        import cv2

        from ..omr import load_template, reader, render

        image = render.render_page_image(load_template("a4-20q-4"), 1, dpi=150)
        reader.read_image_bytes(cv2.imencode(".jpg", image)[1].tobytes(), None)
    except Exception as exc:  # the first real page will say what is wrong
        logger.warning("Engine warm-up failed: %s", exc)
        return
    logger.info("Engine warmed up in %.2f s of CPU", time.process_time() - t0)
