"""A minimal Django settings module for tests/test_django.py: mail goes through mailops."""

SECRET_KEY = "tests-only-not-secret"
EMAIL_BACKEND = "mailops.django.EmailBackend"
DEFAULT_FROM_EMAIL = "webmaster@crm.example.com"
INSTALLED_APPS: list[str] = []
USE_TZ = True
