from coordinator.webhooks.signature import sign, verify
from tests.support import raw_payload


def test_signature_matches_hmac_sha256_of_exact_bytes() -> None:
    body = raw_payload("issues", "labeled")
    header = sign("secret", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify("secret", body, header)


def test_signature_refuses_wrong_secret_tampered_body_and_bad_headers() -> None:
    body = raw_payload("ping", "payload")
    header = sign("secret", body)
    assert not verify("other", body, header)
    assert not verify("secret", body + b" ", header)
    assert not verify("secret", body, None)
    assert not verify("secret", body, "")
    assert not verify("secret", body, header.replace("sha256=", "sha1="))
    assert not verify("", body, sign("", body))
