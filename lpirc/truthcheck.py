"""The organiser's ground truth, checked before a run's clock starts, in a process of its own.

``lpirc run`` refuses a malformed ground truth before any image is handed out, and says which
of its rows name no holdout image (they will count as unanswered). Both need the whole file
parsed: 0.2-0.5 s of CPU at 200,000 rows. That is the organiser's work, not the submission's,
so it must not cost the run's budget; and it need not cost the time to the first answer either:
:class:`TruthCheck` parses the file in a helper process, started after the workers, while the
parent lists the holdout on the other core, then compares the rows with the listed names
there. The parent waits for the verdict before the run's clock starts, so the check is as
strict as before; it never holds the labels, so no worker it forks (a replacement for a dead
one included) can inherit them. The scorer reads the file again after the run.

Should the helper fail to start or die without a verdict, the parent does the same check
itself (slower, never less strict).
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Sequence

import scoring
from lpirc.pipeline import die_with_parent, process_context
from scoring.names import NameIndex, shown


def coverage_note(truth: dict[str, int], files: Sequence[str],
                  truth_names: set[str] | None = None) -> str | None:
    """Ground-truth rows naming no holdout image: they will count as wrong, so say so first.
    Names are matched by the scorer's own rule (scoring.names), so this note and the score
    agree. None when every row names a listed file. ``truth_names``: ``set(truth)``, when
    already made (the helper makes it while the parent lists the holdout)."""
    names = set(truth) if truth_names is None else truth_names
    if not names.difference(files):  # every row names a file exactly: nothing to say
        return None
    index = NameIndex(truth)
    pos, _ = index.match_all(files)
    hit = set(pos)
    missing = sorted(n for i, n in enumerate(index.names) if i not in hit)
    if not missing:
        return None
    # a name not in NFC is shown escaped: it would look the same as its NFC twin
    few = ", ".join(shown(m) for m in missing[:3])
    few += f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"ground truth names {len(missing)} of its {len(truth)} images that are not in the "
            f"holdout (they count as unanswered): {few}")


Notes = tuple[str | None, list[str]]  # (the coverage note or None, the file's own warnings)


def check_here(path: Path, files: Sequence[str] | None) -> Notes:
    """The check in this process: the coverage note when ``files`` is given, and the ground
    truth's own warnings (labels that look 1-based). Raises scoring.ScoringError for a
    malformed or unreadable file."""
    truth, notes = scoring.read_ground_truth_and_notes(path, cache=False)
    return (coverage_note(truth, files) if files is not None else None), notes


def _check_main(path: str, conn: Connection, parent_pid: int) -> None:
    """The helper: parse, say so (or send the error), receive the listed names, send the notes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone decides how to stop
    die_with_parent(parent_pid)
    try:
        try:
            truth, notes = scoring.read_ground_truth_and_notes(path, cache=False)
        except scoring.ScoringError as e:
            conn.send(("error", str(e)))
            return
        conn.send(("parsed",))
        names = set(truth)  # while the parent is still listing the holdout, as likely as not
        joined = conn.recv()
        # the names come joined by NUL (no file name holds one): 200,000 names pickled one by
        # one cost the parent 0.1 s, joined 0.03 s
        files = joined.split("\0") if joined is not None else None
        cover = coverage_note(truth, files, names) if files is not None else None
        conn.send(("notes", cover, notes))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away or gave up: nothing to tell
    except Exception as e:  # noqa: BLE001  a bug: the parent checks again itself
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass
    finally:
        conn.close()


class TruthCheck:
    """A ground-truth check running beside the parent: start it, list the holdout, then
    :meth:`result`; :meth:`close` in any case (kills a helper still running).

    Args:
      path: the ground-truth file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: Connection | None = None
        self._proc: Any = None
        ctx = process_context()
        parent_end, child_end = ctx.Pipe(duplex=True)
        try:
            proc = ctx.Process(target=_check_main, args=(str(self.path), child_end, os.getpid()),
                               daemon=True, name="lpirc-truth-check")
            proc.start()
        except OSError:  # cannot fork now (out of memory, process limit): check here later
            parent_end.close()
            return
        finally:
            child_end.close()
        self._conn, self._proc = parent_end, proc

    def _recv(self) -> tuple | None:
        """The helper's next message, or None when it died without one."""
        assert self._conn is not None and self._proc is not None
        ready = wait([self._conn, self._proc.sentinel])
        if self._conn in ready or self._conn.poll():
            try:
                return self._conn.recv()
            except (EOFError, OSError):
                return None
        return None

    def result(self, files: Sequence[str] | None) -> Notes:
        """The check's notes, given the holdout's listed names (None for a source not listed up
        front): the coverage note (or None) and the ground truth's own warnings. Waits for the
        helper.

        Raises:
          scoring.ScoringError: the ground truth is malformed or cannot be read.
        """
        try:
            msg = self._recv() if self._conn is not None else None
            if msg is not None and msg[0] == "error":
                raise scoring.ScoringError(msg[1])
            if msg is not None and msg[0] == "parsed":
                try:
                    self._conn.send("\0".join(files) if files is not None else None)
                except OSError:
                    msg = None
                else:
                    msg = self._recv()
                if msg is not None and msg[0] == "notes":
                    return msg[1], list(msg[2])
            # no helper, or it died or failed: the same check, here
            return check_here(self.path, files)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the helper (if still running) and release its pipe."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=1.0)


__all__ = ["TruthCheck", "check_here", "coverage_note"]
