#!/bin/sh
# attachflow lab: prepares ${host}'s fresh, private mount and UTS namespaces (made by
# unshare, inside the host's network namespace), then holds them for the host's daemons,
# which join them through `enter`. Nothing mounted here is visible outside.
set -e
H=${host_dir}
mount -t tmpfs -o mode=0755 lab-run /run
mkdir -p /run/sshd /run/libvirt /run/lock
chmod 0755 /run/sshd
mount --bind "$H/etc-libvirt" /etc/libvirt
mount --bind "$H/var-lib-libvirt" /var/lib/libvirt
mount --bind "$H/var-log-libvirt" /var/log/libvirt
mount --bind "$H/var-cache-libvirt" /var/cache/libvirt
mount --bind "$H/root-ssh" /root/.ssh
mount --bind "$H/hosts" /etc/hosts
if [ -e /etc/iscsi/initiatorname.iscsi ]; then
    mount --bind "$H/initiatorname.iscsi" /etc/iscsi/initiatorname.iscsi
fi
hostname ${host}
echo $$ > "$H/ns.pid"
exec sleep infinity
