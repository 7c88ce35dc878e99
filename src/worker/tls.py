"""The ssl_context hook, called as gunicorn 27 calls it:
``ssl_context(conf, default_ssl_context_factory)``. The factory builds a
real ``ssl.SSLContext`` the way gunicorn's does (sock.py), from a subclass
that records what cannot be read back from a context (the certificate
chain, the CA files, the cipher string, ALPN, ...). ``read_back`` then
says what the returned context asks for, and names what rustls cannot be
given."""

import ssl

_UNCARRIED_CALLS = (
    "load_dh_params",
    "set_ecdh_curve",
    "set_alpn_protocols",
    "set_npn_protocols",
    "set_servername_callback",
    "set_psk_server_callback",
    "set_psk_client_callback",
    "load_default_certs",
    "set_default_verify_paths",
)

_COMPARED = (
    "options",
    "verify_flags",
    "post_handshake_auth",
    "keylog_filename",
    "sni_callback",
    "num_tickets",
    "check_hostname",
    "security_level",
)


class RecordingContext(ssl.SSLContext):
    """An SSLContext that remembers the calls whose effect it cannot tell."""

    def _rec(self):
        r = self.__dict__.get("_ferrocorn")
        if r is None:
            r = {"chains": [], "verify": [], "ciphers": None, "calls": []}
            self.__dict__["_ferrocorn"] = r
        return r

    def load_cert_chain(self, certfile, keyfile=None, password=None):
        self._rec()["chains"].append((certfile, keyfile, password is not None))
        return super().load_cert_chain(certfile, keyfile, password)

    def load_verify_locations(self, cafile=None, capath=None, cadata=None):
        self._rec()["verify"].append((cafile, capath, cadata is not None))
        return super().load_verify_locations(cafile, capath, cadata)

    def set_ciphers(self, ciphers):
        self._rec()["ciphers"] = ciphers
        return super().set_ciphers(ciphers)


def _recording(name):
    def call(self, *args, **kwargs):
        shown = ", ".join([repr(a) for a in args] + ["%s=%r" % kv for kv in kwargs.items()])
        self._rec()["calls"].append("%s(%s)" % (name, shown))
        return getattr(ssl.SSLContext, name)(self, *args, **kwargs)

    call.__name__ = name
    return call


for _name in _UNCARRIED_CALLS:
    if hasattr(ssl.SSLContext, _name):
        setattr(RecordingContext, _name, _recording(_name))


def _factory(certfile, keyfile, ca_certs, cert_reqs, ciphers):
    """gunicorn's default_ssl_context_factory, on a RecordingContext."""

    def default_ssl_context_factory():
        context = RecordingContext(ssl.PROTOCOL_TLS_SERVER)
        # ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=...)
        context.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3
        if ca_certs:
            context.load_verify_locations(cafile=ca_certs)
        context.load_cert_chain(certfile=certfile, keyfile=keyfile)
        context.verify_mode = cert_reqs
        if ciphers:
            context.set_ciphers(ciphers)
        return context

    return default_ssl_context_factory


_VERSIONS = {
    ssl.TLSVersion.MINIMUM_SUPPORTED: 0,
    ssl.TLSVersion.TLSv1: 10,
    ssl.TLSVersion.TLSv1_1: 11,
    ssl.TLSVersion.TLSv1_2: 12,
    ssl.TLSVersion.TLSv1_3: 13,
    ssl.TLSVersion.MAXIMUM_SUPPORTED: 99,
}


def call_hook(hook, conf, certfile, keyfile, ca_certs, cert_reqs, ciphers):
    """Calls the hook; returns (ctx, reference) or raises."""
    factory = _factory(certfile, keyfile, ca_certs, cert_reqs, ciphers)
    ctx = hook(conf, factory)
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError("ssl_context must return an ssl.SSLContext, got %r" % (ctx,))
    if not isinstance(ctx, RecordingContext):
        raise TypeError(
            "ssl_context returned an SSLContext that default_ssl_context_factory did not "
            "make: its certificate chain cannot be read back from it, so ferrocorn cannot "
            "serve it with rustls; customise the factory's context instead"
        )
    return read_back(ctx, factory())


def read_back(ctx, ref):
    """(certfile, keyfile, cafiles, verify_mode, ciphers, min, max, uncarried)"""
    rec = ctx._rec()
    uncarried = list(rec["calls"])
    if not rec["chains"]:
        raise ValueError("ssl_context: the returned context has no certificate chain")
    certfile, keyfile, password = rec["chains"][-1]
    # OpenSSL keeps one chain per key type; rustls serves one.
    others = sorted({str(c) for c, _, _ in rec["chains"][:-1]} - {str(certfile)})
    if others:
        uncarried.append("the certificate chain of %s (only the last one loaded, %s, is served)"
                         % (", ".join(others), certfile))
    if password:
        raise ValueError(
            "ssl_context: load_cert_chain(password=...) (an encrypted key) is not "
            "supported by ferrocorn's rustls; decrypt the key file"
        )
    cafiles = []
    for cafile, capath, cadata in rec["verify"]:
        if capath is not None or cadata:
            raise ValueError(
                "ssl_context: load_verify_locations(capath=/cadata=) is not carried over "
                "to rustls; give a cafile"
            )
        if cafile is not None:
            cafiles.append(str(cafile))
    for attr in _COMPARED:
        try:
            got, want = getattr(ctx, attr), getattr(ref, attr)
        except AttributeError:
            continue
        if got != want:
            if attr == "options":
                diff = int(got) ^ int(want)
                names = [m.name for m in ssl.Options if m.value and m.value & diff == m.value]
                uncarried.append("options %s" % ("|".join(names) or hex(diff)))
            else:
                uncarried.append("%s = %r" % (attr, got))
    vmin = _VERSIONS.get(ctx.minimum_version, 0)
    vmax = _VERSIONS.get(ctx.maximum_version, 99)
    if vmin < 12 and vmin != 0:
        uncarried.append("minimum_version %s (rustls offers TLS 1.2 and 1.3 only)" % ctx.minimum_version.name)
    return (
        str(certfile),
        None if keyfile is None else str(keyfile),
        cafiles,
        int(ctx.verify_mode),
        rec["ciphers"],
        vmin,
        vmax,
        uncarried,
    )
