"""The tools built on the core: ``leasectl demo`` and ``leasectl drill``.

Both start real ``leasectl run`` replicas (:mod:`~leasectl.tools.replicas`, one launcher)
and watch the webhook deliveries the leased loops make (:mod:`~leasectl.tools.webhook_sink`,
one signed receiver). The status tables they share with ``leasectl status`` are in
:mod:`~leasectl.tools.status_view`. Imports run one way: the CLI imports the tools, the
tools import the core and the certificate loops (``leasectl.certs``), never the CLI. They
need the ``demo`` extra (rich, and the ``certs`` and ``embedded`` extras); the CLI imports them
only when ``demo`` or ``drill`` runs, so every other command works on a core install.
"""
