"""gunicorn config of the docs' recipe: start the App in each worker after fork."""

from leasectl.integrations.gunicorn import hooks

post_worker_init, worker_exit = hooks("tests.apps.wsgi_app:jobs", start_timeout=30)
