"""gunicorn -c gunicorn.conf.py -w 2 flask_app:web — starts `jobs` in each worker after fork."""

from leasectl.integrations.gunicorn import hooks

post_worker_init, worker_exit = hooks("flask_app:jobs", start_timeout=30)
