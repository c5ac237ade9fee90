"""The local multi-process stack: child processes on loopback ports (``process``), the pool +
emulated engines + gateway launcher (``launcher``), and ``trinity up`` / ``trinity demo`` (``demo``)."""
