"""Optional integrations with the frameworks and tools people embed leasectl in.

Each module imports its framework at import time, so each needs its extra
(``pip install leasectl[fastapi]``, ``[django]``, ``[flask]``, ``[gunicorn]``, ``[otel]``);
the core (``leasectl/*.py``) imports none of them:

- :mod:`leasectl.integrations.asgi` — FastAPI / Starlette lifespan, ``/metrics`` and health;
- :mod:`leasectl.integrations.wsgi` — Flask (or any WSGI app) endpoints;
- :mod:`leasectl.integrations.gunicorn` — start an App in each gunicorn worker after fork;
- :mod:`leasectl.integrations.django` — a Django app with ``manage.py leasectl run``;
- :mod:`leasectl.integrations.otel` — OpenTelemetry spans for ticks and leader runs.
"""
