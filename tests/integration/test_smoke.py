def test_get_secret_value_through_proxy(legacy, emulator):
    out = legacy.get_secret_value(SecretId="demo/db-password")
    assert out["SecretString"] == "correct-horse-battery-staple"
    assert out["Name"] == "demo/db-password"
