"""The hosts file: names resolve only to what the operator wrote; the file is checked as
a whole, and each error names the file, the line, the host and the key; libvirt gets the
same user, port, key and known hosts as attachflow's own SSH."""

import stat
import urllib.parse

import pytest

from attachflow import errors
from attachflow.hosts import load_host, load_hosts


@pytest.fixture
def hosts_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.hosta]\naddress = "198.18.0.11"\n\n'
                    '[hosts.hostb]\naddress = "198.18.0.12"\n')
    return path


def env_of(path):
    return {"ATTACHFLOW_HOSTS": str(path)}


def test_a_typo_is_refused_and_names_the_known_hosts(hosts_file):
    with pytest.raises(errors.UnknownHost) as info:
        load_host("hsota", env=env_of(hosts_file))
    assert str(info.value).startswith("unknown host 'hsota'; known: hosta, hostb, local")
    assert info.value.exit_code == 2


def test_no_hosts_file_knows_only_local_and_explicit_user_at_address(tmp_path):
    env = env_of(tmp_path / "none.toml")
    assert load_host("local", env=env).libvirt_uri == "qemu:///system"
    with pytest.raises(errors.UnknownHost, match="known: local"):
        load_host("compute7", env=env)
    cfg = load_host("admin@10.0.0.7", env=env)
    assert (cfg.name, cfg.address, cfg.ssh_user) == ("10.0.0.7", "10.0.0.7", "admin")
    assert cfg.libvirt_uri == "qemu+ssh://admin@10.0.0.7/system?no_tty=1"
    for bad in ("root@", "@x", "Root Admin@x", "root@x/y", "root@x y"):
        with pytest.raises(errors.UnknownHost, match="is not USER@ADDRESS"):
            load_host(bad, env=env)


def test_libvirt_is_reached_with_the_entrys_user_port_key_and_known_hosts(hosts_file,
                                                                          tmp_path):
    hosts_file.write_text('[hosts.compute7]\naddress = "10.0.0.7"\nssh_user = "ops"\n'
                          'ssh_port = 2222\nssh_key = "/keys/id"\n'
                          'known_hosts = "/keys/known"\n')
    cfg = load_host("compute7", env=env_of(hosts_file))
    uri = urllib.parse.urlsplit(cfg.libvirt_uri)
    assert (uri.scheme, uri.username, uri.hostname, uri.port, uri.path) == (
        "qemu+ssh", "ops", "10.0.0.7", 2222, "/system")
    params = dict(urllib.parse.parse_qsl(uri.query))
    assert params["keyfile"] == "/keys/id"
    wrapper = params["command"]
    text = open(wrapper).read()
    assert "UserKnownHostsFile=/keys/known" in text and "StrictHostKeyChecking=yes" in text
    assert "ConnectTimeout=10" in text  # a host that never answers does not hang libvirt
    assert stat.S_IMODE(__import__("os").stat(wrapper).st_mode) == 0o700
    # attachflow's own SSH takes the same settings
    assert (cfg.ssh_user, cfg.ssh_port, cfg.ssh_key, cfg.known_hosts) == (
        "ops", 2222, "/keys/id", "/keys/known")


def test_an_explicit_libvirt_uri_is_kept(hosts_file):
    hosts_file.write_text('[hosts.hosta]\naddress = "198.18.0.11"\n'
                          'libvirt_uri = "qemu+tls://198.18.0.11/system"\n')
    assert load_host("hosta", env=env_of(hosts_file)).libvirt_uri == \
        "qemu+tls://198.18.0.11/system"


def test_a_migration_uri_is_what_the_source_host_dials_and_defaults_to_the_libvirt_uri(
        hosts_file):
    hosts_file.write_text('[hosts.hosta]\naddress = "198.18.0.11"\n'
                          'migration_uri = "qemu+ssh://root@hosta/system"\n'
                          '[hosts.hostb]\naddress = "198.18.0.12"\n')
    a = load_host("hosta", env=env_of(hosts_file))
    b = load_host("hostb", env=env_of(hosts_file))
    assert a.inbound_migration_uri == "qemu+ssh://root@hosta/system"
    assert a.libvirt_uri.startswith("qemu+ssh://root@198.18.0.11")
    assert b.migration_uri is None and b.inbound_migration_uri == b.libvirt_uri


def test_ssh_and_command_timeouts_are_per_host_with_production_defaults(hosts_file):
    hosts_file.write_text('[hosts.hosta]\naddress = "198.18.0.11"\nconnect_timeout = 3\n'
                          'command_timeout = 900.5\n[hosts.hostb]\naddress = "198.18.0.12"\n')
    a = load_host("hosta", env=env_of(hosts_file))
    b = load_host("hostb", env=env_of(hosts_file))
    assert (a.connect_timeout, a.command_timeout) == (3, 900.5)
    assert (b.connect_timeout, b.command_timeout) == (10.0, 300.0)


@pytest.mark.parametrize("body,line,words", [
    ('[hosts.hosta]\naddress = "a"\nmigration_uri = 7\n', 3,
     "key 'migration_uri': must be a libvirt URI"),
    ('[hosts.hosta]\naddres = "typo"\n', 2, "host 'hosta', key 'addres': unknown key"),
    ('[hosts.hosta]\naddress = "a"\nssh_port = "22"\n', 3,
     "host 'hosta', key 'ssh_port': must be a port number from 1 to 65535, not '22'"),
    ('[hosts.hosta]\naddress = "a"\nssh_port = 70000\n', 3, "key 'ssh_port'"),
    ('[hosts.hosta]\naddress = "a"\nssh_port = true\n', 3, "key 'ssh_port'"),
    ('[hosts.hosta]\nssh_user = "root"\n', 1, "host 'hosta', key 'address': missing"),
    ('[hosts.hosta]\naddress = "a b"\n', 2, "key 'address': must be a host name"),
    ('[hosts.hosta]\naddress = "a"\nssh_user = "Bad User"\n', 3, "key 'ssh_user'"),
    ('[hosts.hosta]\naddress = "a"\nssh_key = ""\n', 3, "key 'ssh_key': must be a path"),
    ('[hosts.hosta]\naddress = 7\n', 2, "key 'address'"),
    ('[hosts."bad/name"]\naddress = "a"\n', 1, "host 'bad/name': host names are"),
    ('[hosts.hosta]\naddress = "a"\ncommand_timeout = 0\n', 3,
     "key 'command_timeout': must be a number of seconds from 1 to 86400, not '0'"),
    ('[hosts.hosta]\naddress = "a"\ncommand_timeout = inf\n', 3, "key 'command_timeout'"),
    ('[hosts.hosta]\naddress = "a"\nconnect_timeout = nan\n', 3, "key 'connect_timeout'"),
    ('[hosts.hosta]\naddress = "a"\nconnect_timeout = "10"\n', 3,
     "key 'connect_timeout': must be a number of seconds from 1 to 300, not '10'"),
])
def test_a_malformed_file_names_the_file_line_host_and_key(hosts_file, body, line, words):
    hosts_file.write_text('[hosts.fine]\naddress = "x"\n\n' + body)
    with pytest.raises(errors.InputError) as info:
        load_host("fine", env=env_of(hosts_file))  # any entry's fault fails the whole file
    message = str(info.value)
    assert message.startswith(f"hosts file {hosts_file}, line {line + 3}: "), message
    assert words in message and info.value.exit_code == 2


@pytest.mark.parametrize("body,line,words", [
    ('[hosts.hosta]\naddress = "a"\n[host.hostb]\naddress = "b"\n', 3,
     "key 'host': unknown top-level key"),
    ('hosts = "hosta"\n', 1, "key 'hosts': must be a table"),
    ('[hosts]\nhosta = "a"\n', 2, "host 'hosta': must be a table"),
])
def test_a_malformed_file_layout_names_the_line(hosts_file, body, line, words):
    hosts_file.write_text(body)
    with pytest.raises(errors.InputError) as info:
        load_hosts(env_of(hosts_file))
    assert str(info.value).startswith(f"hosts file {hosts_file}, line {line}: ")
    assert words in str(info.value)


def test_broken_toml_names_the_file(hosts_file):
    hosts_file.write_text("[hosts.hosta\n")
    with pytest.raises(errors.InputError, match=f"hosts file {hosts_file}: "):
        load_hosts(env_of(hosts_file))


def test_an_unreadable_file_is_one_line(hosts_file):
    hosts_file.unlink()
    hosts_file.mkdir()
    with pytest.raises(errors.InputError, match="hosts file .*: Is a directory"):
        load_hosts(env_of(hosts_file))
