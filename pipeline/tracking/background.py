"""A pipeline run's MLflow tracking, done by a helper process beside it.

Importing MLflow and opening its store take about 1.3 s, and logging a run and its model
another 0.5 s: a third of ``clv run`` on a million rows. It is all Python holding the GIL,
so a thread would only interleave it with the work; a child process does it on another core
instead. The child opens the store and starts the MLflow run while the features are
computed, hashes the input log, logs the fit during the value stage and the model while the
plots are drawn, and finishes the run when the outputs are in place; the parent never
imports MLflow.

What the user sees is unchanged: an unreachable tracking server stops the run before any
work (checked here, without MLflow); a store the child cannot use stops it at the next step
(exit 3, nothing written); a failed or interrupted run is FAILED or KILLED in MLflow with its
error, and registers nothing. The same :mod:`pipeline.tracking` functions log everything.

Messages are pickled tuples: requests on the child's stdin, replies on a copy of its stdout
(the child's own output goes to stderr). Requests, in this order: ``("start", config, kind,
run_name, config_path)``, ``("log_fit", fit)``, ``("log_model", scorer, example)``,
``("finish", run_dir, summary, checks)``; or, at any point, ``("fail", error_type, message,
killed)``. Replies: ``("started", run_id)``,
``("unusable", message)``, ``("finished", registered)``, ``("ended",)``, ``("error", message)``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import TrackingError

# How long the parent waits for the child to end a failed run before it stops waiting.
FAILURE_TIMEOUT_SECONDS = 60


class BackgroundRun:
    """The parent's handle on the child: send the run's results, learn the store's state."""

    def __init__(self, config: Config, kind: str, config_path: Path | None = None, run_name: str | None = None):
        self.config = config
        self.kind = kind
        self.config_path = None if config_path is None else Path(config_path)
        self.run_name = run_name
        self.run_id: str | None = None
        self.active = True
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()

    # --- the child process ---------------------------------------------------------------

    def start(self) -> None:
        from pipeline import tracking

        # An unreachable server or a store that does not open stops the run before any work.
        tracking.check_store(tracking.tracking_uri(self.config.tracking))
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.background"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env,
        )
        threading.Thread(target=self._read_replies, name="tracking-replies", daemon=True).start()
        self._send("start", self.config, self.kind, self.run_name, self.config_path)

    def _read_replies(self) -> None:
        try:
            while True:
                self._replies.put(pickle.load(self._process.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
            self._replies.put(None)  # the child has gone

    def _send(self, *message: Any) -> bool:
        try:
            pickle.dump(message, self._process.stdin)
            self._process.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def _next_reply(self, wait: bool) -> tuple | None:
        """The next reply; None when there is none yet (``wait=False``)."""
        try:
            reply = self._replies.get(block=wait)
        except queue.Empty:
            return None
        if reply is None:
            self._replies.put(None)  # every later read sees the end too
            message = (
                f"the MLflow tracking process ended unexpectedly (exit code {self._process.wait()}); "
                "see its messages above"
            )
            # Before the run started, it is a store that could not be used.
            return ("unusable", message) if self.run_id is None else ("error", message)
        return reply

    def _handle(self, reply: tuple) -> tuple:
        kind = reply[0]
        if kind == "started":
            self.run_id = reply[1]
        elif kind == "unusable":
            self.active = False
            if self.config.tracking.required:
                raise TrackingError(reply[1])
            warnings.warn(f"{reply[1]}; tracking.required is false, so outputs are written locally only", stacklevel=4)
        elif kind == "error":
            self.active = False
            raise TrackingError(reply[1])
        return reply

    # --- what the run calls --------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`TrackingError` if the child has found the store unusable or failed (does not wait)."""
        while self.active and (reply := self._next_reply(wait=False)) is not None:
            self._handle(reply)

    def log_fit(self, fit: Any) -> None:
        """Have the fitted models, the candidates and the backtest logged (the fit stage's outputs)."""
        self.check()
        if self.active:
            self._send("log_fit", fit)

    def log_model(self, scorer: Any, features: Any) -> None:
        """Have the model logged (not yet registered) from the fitted ``scorer`` and the customers ``features``."""
        from pipeline.tracking import model_example

        self.check()
        if self.active:
            self._send("log_model", scorer, model_example(features, scorer))

    def wait_until_started(self) -> None:
        """Wait for the child to have started the MLflow run; raise as :meth:`check` does."""
        while self.active and self.run_id is None:
            self._handle(self._next_reply(wait=True))

    def send_finish(self, run_dir: Path, summary: dict[str, Any], checks: dict[str, Any]) -> None:
        """Have the finished run logged from its final directory and its model registered with the
        release gates' ``checks`` (see :meth:`finish`)."""
        self.wait_until_started()
        if self.active:
            self._send("finish", Path(run_dir), summary, checks)

    def finish(self) -> dict[str, Any] | None:
        """Wait for the run to be logged and ended; the registered version, None if tracking stopped."""
        if not self.active:
            return None
        while True:
            reply = self._handle(self._next_reply(wait=True))
            if reply[0] == "finished":
                self.active = False
                return reply[1]

    def fail(self, exc: BaseException) -> None:
        """End the MLflow run as FAILED (KILLED on an interrupt) with ``exc`` as its error."""
        from pipeline.tracking import error_line

        if not self.active or self._process is None:
            return
        self.active = False
        if not self._send("fail", type(exc).__name__, error_line(exc), isinstance(exc, KeyboardInterrupt)):
            return
        try:
            self._process.wait(timeout=FAILURE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            warnings.warn("the MLflow tracking process did not end the failed run in time", stacklevel=3)

    def close(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout=FAILURE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextlib.contextmanager
def background_run(
    config: Config, kind: str, config_path: Path | None = None, run_name: str | None = None
) -> Iterator[BackgroundRun | None]:
    """A run tracked by the helper process; None with ``tracking.enabled: false`` — or with an
    unreachable server and ``tracking.required: false`` (a warning says so)."""
    if not config.tracking.enabled:
        yield None
        return
    tracker = BackgroundRun(config, kind, config_path, run_name)
    try:
        tracker.start()
    except TrackingError as exc:
        if config.tracking.required:
            raise
        warnings.warn(f"{exc}; tracking.required is false, so outputs are written locally only", stacklevel=3)
        yield None
        return
    try:
        yield tracker
    except BaseException as exc:
        tracker.fail(exc)
        raise
    finally:
        tracker.close()


# --- the child -------------------------------------------------------------------------------

class _Reported(Exception):
    """An error already sent to the parent, which tells the user."""


class _RunFailed(Exception):
    def __init__(self, error_type: str, message: str, killed: bool):
        super().__init__(message)
        self.error_type, self.message, self.killed = error_type, message, killed


def _serve(requests, reply) -> None:
    from pipeline import tracking

    _, config, kind, run_name, config_path = pickle.load(requests)
    try:
        client = tracking.connect(config.tracking)
    except Exception as exc:  # noqa: BLE001 - whatever the store raised, the parent reports one line
        reply("unusable", str(exc) if isinstance(exc, TrackingError) else f"tracking store: {tracking.error_line(exc)}")
        return
    try:
        with tracking.open_run(client, config, kind, run_name) as run:
            reply("started", run.run_id)
            try:
                registered = _log_until_finished(run, config, config_path, requests)
            except _RunFailed as failed:
                tracking.end_failed(run, failed.message, failed.error_type, failed.killed)
                registered = None
    except Exception as exc:
        reply("error", f"MLflow logging failed: {type(exc).__name__}: {tracking.error_line(exc)}")
        raise _Reported from exc
    # Only now is the MLflow run ended.
    if registered is None:
        reply("ended")
    else:
        reply("finished", registered)


def _log_until_finished(run, config: Config, config_path: Path | None, requests) -> dict[str, Any]:


    from pipeline import tracking

    # While the parent works: what needs only the config, the fingerprint's hash of the log
    # (found done at the end), and the imports that unpickling the models and logging them need.
    tracking.log_config(run, config, config_path)
    with contextlib.suppress(OSError):
        tracking.input_file_sha256(tracking.resolve_input_path(str(config.input.path)))
    import mlflow.models  # noqa: F401
    import mlflow.pyfunc  # noqa: F401

    import pipeline.runner  # noqa: F401
    import pipeline.stages.value  # noqa: F401

    logged_model = scorer = None
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            raise _RunFailed("ProcessEnded", "the pipeline process ended before the run finished", False) from None
        if request[0] == "log_fit":
            tracking.log_fit(run, request[1])
        elif request[0] == "log_model":
            _, scorer, example = request
            logged_model = tracking.log_model(run, example, scorer)
        elif request[0] == "finish":
            if logged_model is None:
                raise RuntimeError("the run finished before its model was logged")
            _, run_dir, summary, checks = request
            return tracking.log_pipeline_end(run, config, run_dir, summary, scorer, logged_model, checks)
        elif request[0] == "fail":
            raise _RunFailed(*request[1:])


def main() -> None:
    import signal

    # Ctrl-C reaches the whole process group; the parent reports it, and the run ends KILLED.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Not niced: at nice 10 this process (MLflow's imports, opening the store, logging) starved
    # whenever the machine was busy, and the run then waited for it at the end (2026-11-30,
    # alternating runs of clv run: 1M rows 11.2 vs 12.5 s, 50M rows 90 vs 97 s without it).
    # Replies go to a copy of stdout; anything printed (by MLflow or a warning) goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    def reply(*message: Any) -> None:
        try:
            pickle.dump(message, replies)
            replies.flush()
        except (BrokenPipeError, OSError):
            pass  # the parent has gone; the run is ended as FAILED by the caller

    code = 1
    try:
        _serve(sys.stdin.buffer, reply)
        code = 0
    except _Reported:  # the parent prints it; the run is FAILED
        pass
    except Exception:  # a bug: its traceback, for the parent's "see its messages above"
        traceback.print_exc()
    from pipeline.process import exit_now

    # Tearing down MLflow's ~2,000 modules would take a second the parent waits for.
    exit_now(code)


if __name__ == "__main__":
    main()
