"""Django: ``manage.py leasectl run`` runs your App with settings from Django's settings.

:Status: Beta

Add ``"leasectl.integrations.django"`` to ``INSTALLED_APPS`` and say which App to run::

    LEASECTL = {
        "APP": "myproject.jobs:app",   # module:attribute of your leasectl.App
        # optional: "DSN" (default: DATABASES["default"] when it is PostgreSQL),
        # "CONFIG" (a leasectl YAML file), "REPLICA_ID", "METRICS_LISTEN"
    }

then run ``python manage.py leasectl run`` as its own process next to your web workers (one
per host or container; each is a replica). It is ``leasectl run --app`` with Django set up
first, so your loops can use the ORM (Django's own connections are not fenced: write what
must be fenced through ``ctx.transaction()``). Needs the ``django`` extra.
"""
