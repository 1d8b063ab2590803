import pytest

from attachflow import errors
from attachflow.hosts import load_host


def test_bare_name_means_root_over_ssh(tmp_path):
    cfg = load_host("compute7", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})
    assert (cfg.address, cfg.ssh_user, cfg.libvirt_uri) == \
        ("compute7", "root", "qemu+ssh://root@compute7/system")


def test_local_is_this_machine(tmp_path):
    cfg = load_host("local", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})
    assert cfg.local and cfg.libvirt_uri == "qemu:///system"


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.hosta]\naddress = "198.18.0.11"\nssh_key = "/k"\n'
                    'known_hosts = "/kh"\n')
    cfg = load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})
    assert cfg.address == "198.18.0.11" and cfg.ssh_key == "/k"
    assert cfg.libvirt_uri == "qemu+ssh://root@198.18.0.11/system"
    path.write_text('[hosts.hosta]\naddres = "typo"\n')
    with pytest.raises(errors.InputError, match="unknown keys"):
        load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})
    path.write_text('[hosts.hosta\n')
    with pytest.raises(errors.InputError, match="hosts file"):
        load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})


def test_bad_host_name(tmp_path):
    with pytest.raises(errors.UnknownHost):
        load_host("root@x", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})
