"""How the host reaches a device: `base.Transport` (the interface), `adb.AdbTransport` (shell mode
over adb), `local.LocalTransport` (the embedded default). Issue 6 adds the Termux daemon beside them."""
