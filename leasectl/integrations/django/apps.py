"""The Django app config (``INSTALLED_APPS``: ``"leasectl.integrations.django"``)."""

from __future__ import annotations

from django.apps import AppConfig


class LeasectlConfig(AppConfig):
    name = "leasectl.integrations.django"
    label = "leasectl"
    verbose_name = "leasectl"
