"""Two OpenSSL settings that Python's ssl module has no method for, reached through ctypes in the OpenSSL
library that the ssl module itself is linked to:

- a verify callback that accepts any client certificate: what Go's RequestClientCert and
  RequireAnyClientCert do (ask for a certificate without checking who signed it); Python's ssl can only ask
  for one *and* verify it against the loaded CAs;
- a list of key-exchange groups (curve_preferences with more than one curve): SSLContext.set_ecdh_curve
  takes one.

The SSL_CTX pointer is the first field of CPython's `_ssl._SSLContext` object, after the object header.
Before anything is set through it, the pointer is checked: OpenSSL must report, through it, the very verify
mode and options that the Python object reports, under two different settings, and the library's version
must be the one the ssl module was built with. Anything else (another Python, a static build, a different
layout) makes `available()` false, and the config refuses the value that needs it, with the reason.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from functools import cache

# int (*)(int preverify_ok, X509_STORE_CTX *): returning 1 accepts the certificate whatever its chain.
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda preverify_ok, store: 1)  # module-level: lives as long as the contexts
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list() is a macro over SSL_CTX_ctrl()
_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_MODES = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: _SSL_VERIFY_PEER,
          ssl.CERT_REQUIRED: _SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT}


class OpenSslUnavailable(Exception):
    """The ssl module's OpenSSL cannot be reached safely here; the message says why."""


@cache
def _library() -> ctypes.CDLL:
    if sys.implementation.name != "cpython":
        raise OpenSslUnavailable(f"needs CPython's ssl module, not {sys.implementation.name}'s")
    import _ssl

    path = getattr(_ssl, "__file__", None)
    try:
        lib = ctypes.CDLL(path)  # dlsym through _ssl's handle finds the libssl it is linked to; None: static
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
    except (OSError, AttributeError) as exc:
        raise OpenSslUnavailable(f"cannot load OpenSSL's functions: {exc}") from None
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise OpenSslUnavailable("the OpenSSL library found is not the one the ssl module was built with")
    _check_layout(lib)
    return lib


def _pointer(ctx: ssl.SSLContext) -> int:
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        raise OpenSslUnavailable("the SSLContext holds no SSL_CTX where CPython keeps it")
    return pointer


def _check_layout(lib: ctypes.CDLL) -> None:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pointer = _pointer(probe)
    for mode, extra in ((ssl.CERT_NONE, 0), (ssl.CERT_REQUIRED, ssl.OP_NO_TICKET)):
        probe.verify_mode = mode
        probe.options |= extra
        if (lib.SSL_CTX_get_verify_mode(pointer) != _MODES[mode]
                or lib.SSL_CTX_get_options(pointer) != int(probe.options)):
            raise OpenSslUnavailable("CPython's SSLContext layout is not the one expected")


def available() -> str | None:
    """None when the two settings below can be used; else why not (one line)."""
    try:
        _library()
    except OpenSslUnavailable as exc:
        return str(exc)
    return None


def accept_any_client_certificate(ctx: ssl.SSLContext) -> None:
    """Keep ctx.verify_mode (CERT_OPTIONAL: ask; CERT_REQUIRED: require) but accept any certificate sent.

    Python keeps a context's verify callback when verify_mode is set again, so set verify_mode first.
    """
    lib = _library()
    lib.SSL_CTX_set_verify(_pointer(ctx), _MODES[ctx.verify_mode], _ACCEPT_ANY)


def set_groups(ctx: ssl.SSLContext, names: list[str]) -> None:
    """The key-exchange groups, in preference order (OpenSSL names: X25519, P-256, P-384, P-521)."""
    lib = _library()
    wanted = ctypes.c_char_p(":".join(names).encode("ascii"))
    if lib.SSL_CTX_ctrl(_pointer(ctx), _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.cast(wanted, ctypes.c_void_p)) != 1:
        raise ssl.SSLError(f"OpenSSL refused the groups {':'.join(names)}")
