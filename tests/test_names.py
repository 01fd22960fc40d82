import pytest

from infra import names


@pytest.mark.parametrize("value", ["a", "graph-1", "0abc", "a" * 63])
def test_valid_labels_pass_unchanged(value: str) -> None:
    assert names.check_label(value, "name") == value


@pytest.mark.parametrize("value", ["", "A", "a_b", "-a", "a-", "a.b", "a" * 64])
def test_invalid_labels_name_the_field_and_the_fix(value: str) -> None:
    with pytest.raises(ValueError, match=r"^metadata\.namespace: .*lowercase letters, digits and '-'"):
        names.check_label(value, "metadata.namespace")


def test_dns1035_needs_a_leading_letter() -> None:
    assert names.check_dns1035_label("svc-1", "service") == "svc-1"
    with pytest.raises(ValueError, match="starting with a letter"):
        names.check_dns1035_label("1svc", "service")


def test_subdomain_allows_dots_and_253_chars() -> None:
    assert names.check_subdomain("a.b-c.d", "name") == "a.b-c.d"
    long = ".".join(["a" * 63] * 4)[:253].rstrip(".")
    assert names.check_subdomain(long, "name") == long
    for bad in ["a..b", "a.B", "a" * 254]:
        with pytest.raises(ValueError, match="DNS-1123 subdomain"):
            names.check_subdomain(bad, "name")


def test_base_name_may_be_long_but_must_start_with_a_letter() -> None:
    assert names.check_base_name("f" * 200, "name") == "f" * 200
    with pytest.raises(ValueError, match=r"^name: '9lives' cannot name"):
        names.check_base_name("9lives", "name")


def test_shorten_keeps_short_names() -> None:
    assert names.shorten("graph", 63) == "graph"
    assert names.shorten("g" * 63, 63) == "g" * 63


def test_shorten_is_deterministic_distinct_and_valid() -> None:
    a = "train-" + "x" * 70 + "-a"
    b = "train-" + "x" * 70 + "-b"
    short_a = names.shorten(a, 52)
    assert short_a == names.shorten(a, 52)
    assert short_a != names.shorten(b, 52)
    assert len(short_a) == 52
    assert short_a.startswith("train-xxx")
    names.check_dns1035_label(short_a, "shortened")


def test_shorten_never_leaves_a_dash_before_the_hash() -> None:
    name = "a" * 42 + "-" * 30
    short = names.shorten(name, 52)
    assert "--" not in short
    names.check_label(short, "shortened")


def test_shorten_rejects_a_limit_too_small_for_the_hash() -> None:
    with pytest.raises(ValueError, match="limit must be at least 10"):
        names.shorten("abcdefghijklmnop", 9)


def test_statefulset_name_leaves_room_for_the_revision_hash_label() -> None:
    sts = names.statefulset_name("n" * 70)
    assert len(sts) + len("-") + 10 <= 63
    assert names.object_name("n" * 70) != sts
    assert len(names.object_name("n" * 70)) == 63


def test_pod_fqdn() -> None:
    assert names.pod_fqdn("g", "g-svc", "ml", 3) == "g-3.g-svc.ml.svc.cluster.local"
    with pytest.raises(ValueError, match="ordinal"):
        names.pod_name("g", -1)
