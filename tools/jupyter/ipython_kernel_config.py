# The book's kernels (installed by the Makefile into .venv/etc/ipython/, where every kernel of the
# environment reads it).
#
# ipykernel 7 logs "Kernel is running over TCP without encryption ..." when it starts on a TCP
# connection file without CurveZMQ keys. JupyterLab's kernels get keys (KernelManager
# .transport_encryption = "auto", tools/jupyter/jupyter_server_config.json), so the warning
# does not arise there; papermill and nbval create their kernel managers without reading any
# Jupyter configuration, so their kernels (local, on 127.0.0.1, authenticated by the connection
# file's HMAC key) always start unencrypted, and the warning would print once per chapter in
# `make book` and `make test`. Only that one message is dropped; every other kernel log line stays.
import logging


class _DropUnencryptedTcpNotice(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("Kernel is running over TCP without encryption")


logging.getLogger("IPKernelApp").addFilter(_DropUnencryptedTcpNotice())

# NumPy 2 writes a scalar as `np.float64(0.5)`; myst-nb's `{glue:text}` formats (`:.2f`) parse a
# glued value's plain-text form as a number and fail on that. Every kernel of the environment
# prints NumPy scalars as plain numbers (`0.5`), as NumPy 1 did; nothing else changes.
c = get_config()  # noqa: F821 (provided by the traitlets config loader)
c.InteractiveShellApp.exec_lines = [
    "import numpy as _flatness_numpy; _flatness_numpy.set_printoptions(legacy='1.25'); del _flatness_numpy"]
