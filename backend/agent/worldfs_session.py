"""worldfs_session.py: a world's persistent Python session, run by
worldfs-agent inside the guest (backend/agent/agent.c).

    python3 worldfs_session.py CTL_FD STATUS_FD RUN_DIR

It reads one command per line on CTL_FD:

    run SEQ   run RUN_DIR/code in the session's namespace, with descriptors 1
              and 2 on the FIFOs RUN_DIR/out and RUN_DIR/err (so the output of
              child processes is captured too), then write
              "worldfs-status SEQ STATUS" to STATUS_FD
    reseed    reseed the global generators of random and numpy.random from
              the kernel's RNG (after a branch or restore)

Script semantics, as `python3 script.py` gives them: an uncaught exception
prints its traceback to stderr and gives status 1, sys.exit(n) gives n (as
the exit status of a process would be: n & 0xff, None 0, anything else
printed, 1), and the session survives both.  Top-level names, imports and
objects persist from one run to the next in one module, __main__, which is
what snapshots and branches copy.  The agent interrupts a run that exceeds
its time with SIGINT, which raises KeyboardInterrupt while a run is on
(Python's own handler, as in a script) and is ignored between runs (a late
signal must not kill the session).

Nothing of this program is visible to the code it runs: its own names live
in this module, not in __main__, and its directory is not on sys.path.
"""
import builtins
import linecache
import os
import signal
import sys
import traceback
import types

STATUS_TAG = "worldfs-status"
SOURCES_KEPT = 64  # runs whose source lines tracebacks can still show

def exit_status(exc):
    """The status sys.exit(code) gives a script."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def remember_source(name, source, kept):
    """Let tracebacks show the lines of this run, and of the runs whose
    functions may still be called, as they do for a script."""
    # A coding cookie can only be on the first two lines; without one
    # (nearly always) the source is UTF-8, and tokenize's regular
    # expressions are not worth running (they cost a verse's first run
    # most under emulation).
    head = source.split(b"\n", 2)[:2]
    encoding = "utf-8"
    if any(b"coding" in line for line in head):
        try:
            import io
            import tokenize
            encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        except Exception:
            pass
    text = source.decode(encoding, "replace")
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    kept.append(name)
    while len(kept) > SOURCES_KEPT:
        linecache.cache.pop(kept.pop(0), None)


def print_traceback(exc):
    """The traceback of exc without this program's own frame, as the
    interpreter prints one for a script."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def execute(source, name, namespace):
    """Run source in namespace; returns the run's exit status."""
    try:
        code = compile(source, name, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError) as exc:
        traceback.print_exception(type(exc), exc, None)
        return 1
    # Set again for every run: the code may have replaced it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        exec(code, namespace)
        status = 0
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException as exc:  # KeyboardInterrupt too: the agent says 124
        # The agent repeats SIGINT until the status comes: a second one
        # must not cut the traceback short (under TCG printing it is slow).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print_traceback(exc)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def flush_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def run(seq, run_dir, namespace, kept, saved):
    status = 1
    try:
        with open(os.path.join(run_dir, "code"), "rb") as f:
            source = f.read()
        out = os.open(os.path.join(run_dir, "out"), os.O_WRONLY | os.O_CLOEXEC)
        err = os.open(os.path.join(run_dir, "err"), os.O_WRONLY | os.O_CLOEXEC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        # A run that replaced them does not take the next runs' output.
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        name = "<exec-%d>" % seq
        remember_source(name, source, kept)
        status = execute(source, name, namespace)
    except KeyboardInterrupt:
        status = 130  # between the code's end and SIG_IGN
    except Exception:
        traceback.print_exc()
    finally:
        flush_streams()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    return status


def reseed():
    """Fresh global generators, from the kernel's RNG (reseeded just now by
    the agent): a branch must not draw its siblings' numbers."""
    random = sys.modules.get("random")
    if random is not None:
        random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None and hasattr(numpy, "random"):
        # A full Mersenne Twister state's worth of kernel entropy, as
        # an array: the same quality as seed() without an argument,
        # without the SeedSequence machinery (pure Python, and slow to
        # run for the first time in a new verse under emulation).
        try:
            numpy.random.seed(numpy.frombuffer(os.urandom(624 * 4), dtype=numpy.uint32))
        except Exception:
            pass


def main():
    ctl_fd, status_fd, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for fd in (ctl_fd, status_fd):
        os.set_inheritable(fd, False)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.argv[:] = [""]
    # The user's code runs in a fresh __main__, not in this module.
    main_module = types.ModuleType("__main__")
    main_module.__builtins__ = builtins
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    saved = (os.dup(1), os.dup(2))
    for fd in saved:
        os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    kept = []
    ctl = os.fdopen(ctl_fd, "rb", buffering=0)
    pending = b""
    while True:
        chunk = ctl.read(4096)
        if not chunk:
            return 0  # the agent is gone
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            words = line.decode("ascii", "replace").split()
            if words[:1] == ["run"] and len(words) == 2 and words[1].isdigit():
                seq = int(words[1])
                status = run(seq, run_dir, namespace, kept, saved)
                if os.getpid() != me:
                    os._exit(status)  # a fork of the code's that came back here
                os.write(status_fd, ("%s %d %d\n" % (STATUS_TAG, seq, status)).encode())
            elif words == ["reseed"]:
                reseed()


if __name__ == "__main__":
    sys.exit(main())
