"""The login pages: failed logins are counted per address and per username
and, past the limit, answered with 429 (the site's page and the admin's);
passwords go through Django's full set of validators."""

from __future__ import annotations

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

LOGIN = reverse("batches:login")


def attempt(client, username, password, url=LOGIN):
    return client.post(url, {"username": username, "password": password})


def test_too_many_failures_for_one_username_block_it_with_a_clear_429(owner, colleague, settings):
    settings.OMR_LOGIN_FAILURES_PER_USER = 5
    client = Client()
    for _ in range(5):
        response = attempt(client, "alice", "wrong")
        assert response.status_code == 200 and b"correct username" in response.content
    # Then even the right password is refused, saying why and for how long
    response = attempt(client, "alice", "alice-pw-123")
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content and b"15 minutes" in response.content
    assert response["Retry-After"] == "900"
    assert "_auth_user_id" not in client.session
    # The username is blocked on the admin's login page too, from another address
    response = attempt(Client(REMOTE_ADDR="10.0.0.9"), "ALICE", "alice-pw-123", reverse("admin:login"))
    assert response.status_code == 429
    # Another user from the same address still logs in
    assert attempt(client, "bob", "bob-pw-123").status_code == 302


def test_too_many_failures_from_one_address_block_it(owner, settings):
    settings.OMR_LOGIN_FAILURES_PER_ADDRESS = 4
    client = Client(REMOTE_ADDR="192.0.2.7")
    for i in range(4):
        attempt(client, f"guess{i}", "wrong", reverse("admin:login") if i % 2 else LOGIN)
    assert attempt(client, "alice", "alice-pw-123").status_code == 429
    assert attempt(client, "alice", "alice-pw-123", reverse("admin:login")).status_code == 429
    # Another address is not blocked
    assert attempt(Client(REMOTE_ADDR="192.0.2.8"), "alice", "alice-pw-123").status_code == 302


def test_the_window_passes(owner, settings):
    settings.OMR_LOGIN_FAILURES_PER_USER = 1
    settings.OMR_LOGIN_WINDOW_MINUTES = 1 / 60  # one second
    client = Client()
    attempt(client, "alice", "wrong")
    assert attempt(client, "alice", "alice-pw-123").status_code == 429
    import time

    time.sleep(1.2)
    assert attempt(client, "alice", "alice-pw-123").status_code == 302


@pytest.mark.parametrize(("password", "reason"), [
    ("short7!", "too short"),
    ("password123", "too common"),
    ("80417263959", "entirely numeric"),
    ("alice.marchetti", "too similar"),
])
def test_every_password_validator_is_on(django_user_model, password, reason):
    user = django_user_model(username="alice.marchetti", email="alice.marchetti@example.org")
    with pytest.raises(ValidationError) as info:
        validate_password(password, user)
    assert reason in " ".join(info.value.messages)
    validate_password("quiet-lantern-harbour", user)
