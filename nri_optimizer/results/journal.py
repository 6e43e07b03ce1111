"""A note per running trace in ``<persist_dir>/.inflight/``, so that a plugin killed mid-trace (SIGKILL,
OOM, a node crash) has the traces it lost logged by the next one that starts.

One small file per container id holding the image name; written after StartContainer is answered,
removed when the trace ends, whatever the ending.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)

DIRECTORY = ".inflight"


class Journal:
    def __init__(self, persist_dir: str) -> None:
        self._dir = os.path.join(persist_dir, DIRECTORY)

    def begin(self, container_id: str, image: str) -> None:
        try:
            os.makedirs(self._dir, 0o755, exist_ok=True)
            fd = os.open(
                os.path.join(self._dir, container_id),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
            with os.fdopen(fd, "w", encoding="utf-8") as note:
                note.write(image)
        except OSError as exc:
            log.warning("%s cannot note the trace in %s: %s", container_id, self._dir, exc.strerror)

    def end(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self._dir, container_id))
        with contextlib.suppress(OSError):  # gone with the last note: persist_dir shows results only
            os.rmdir(self._dir)

    def report_lost(self) -> None:
        """Log and clear the notes an earlier plugin left: traces it never finished."""
        try:
            names = os.listdir(self._dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self._dir, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as note:
                    image = note.read(512)
            except OSError:
                image = "?"
            log.error(
                "%s trace lost: the plugin stopped before finishing it (image %s); nothing was written", name, image
            )
            self.end(name)
