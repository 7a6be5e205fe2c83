#!/bin/sh
# Kemon first boot: install the gateway bundle from the boot partition into place.
#
# Written by 'kemon provision image' into kemon/ on the FAT boot partition, run once as root,
# either from the kernel command line (systemd.run=…, appended to cmdline.txt) or by
# kemon-firstboot.service on images that ship Kemon. It
#   - checks the bundle against its SHA256SUMS,
#   - creates the system user kemon (groups kemon, dialout) if missing,
#   - installs /etc/kemon/gateway.toml (root:kemon 0640), /etc/kemon/tls/ca.pem and
#     gateway.pem (0644), gateway.key (root:kemon 0640), /var/lib/kemon (kemon:kemon 0750),
#   - installs the systemd units the bundle carries and enables them (when Kemon is installed),
#   - installs the udev rules it carries into /etc/udev/rules.d (0644) and, on the running
#     system, has udev apply them to the serial ports,
#   - installs the site's firewall, when it carries one, as /etc/nftables.d/kemon-gateway.nft,
#     includes it from /etc/nftables.conf, enables nftables.service and, on the running system,
#     loads it (a ruleset that does not load is logged, and the gateway still comes up),
#   - removes the key from the boot partition, restores cmdline.txt, removes the bundle.
# Every file is written to a temporary name and renamed; every step can run again, so an
# interrupted run is finished by the next one. Messages go to stdout (the journal, the console)
# and to /var/log/kemon-firstboot.log.
#
# Environment (for tests and image builders):
#   KEMON_ROOT   prefix for every installed path (default: empty, the running system); when set,
#                users are created with 'useradd --prefix' and units enabled with
#                'systemctl --root', nothing is started, udev and nft are not called
#   KEMON_BOOT   the boot partition's mount point (default: the one holding kemon/, looked for
#                at /boot/firmware then /boot)
#   KEMON_START  1: start the gateway at the end (the unit sets it; the kernel-command-line
#                boot reboots instead)
set -eu
umask 077

ROOT=${KEMON_ROOT:-}
USER_NAME=kemon
BIN=/usr/local/bin/kemon

LOGFILE=""                          # set once there is work to do: a no-op run leaves no trace
log() {
    printf 'kemon-firstboot: %s\n' "$*"
    if [ -n "$LOGFILE" ]; then printf '%s %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOGFILE" || :; fi
}
die() { log "error: $*"; exit 1; }

# On failure the next boot must be a normal one (the hook would only fail again): take the hook
# out of cmdline.txt and keep the bundle for a look (journalctl -b -1).
on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ] && [ -n "${B:-}" ]; then
        log "failed (exit $rc); the bundle stays in $B"
        restore_cmdline || true
    fi
}
trap on_exit EXIT

# uid/gid of a name in the target's own databases (numbers: the host's names may differ)
id_of() { awk -F: -v n="$2" '$1 == n { print $3; found = 1 } END { exit !found }' "$ROOT/etc/$1"; }

find_boot() {
    if [ -n "${KEMON_BOOT:-}" ]; then
        BOOT=$KEMON_BOOT
        return 0
    fi
    for b in /boot/firmware /boot; do
        if [ -d "$b/kemon" ]; then BOOT=$b; return 0; fi
    done
    BOOT=""
}

# install SRC DEST MODE UID GID: copy to DEST.kemon-new with owner and mode, then rename
install_file() {
    tmp="$2.kemon-new"
    rm -f "$tmp"
    cp "$1" "$tmp"
    chown "$4:$5" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

ensure_user() {
    prefix=""
    [ -n "$ROOT" ] && prefix="--prefix $ROOT"
    if ! id_of group "$USER_NAME" >/dev/null; then
        # shellcheck disable=SC2086  # $prefix is empty or two words on purpose
        groupadd $prefix --system "$USER_NAME"
        log "created group $USER_NAME"
    fi
    if ! id_of passwd "$USER_NAME" >/dev/null; then
        # shellcheck disable=SC2086
        useradd $prefix --system --gid "$USER_NAME" --home-dir /var/lib/kemon --no-create-home \
            --shell /usr/sbin/nologin --comment "Kemon gateway" "$USER_NAME"
        log "created system user $USER_NAME"
    fi
    if ! awk -F: -v u="$USER_NAME" '$1 == "dialout" { n = split($4, m, ","); \
            for (i = 1; i <= n; i++) if (m[i] == u) ok = 1 } END { exit !ok }' \
            "$ROOT/etc/group"; then
        # shellcheck disable=SC2086
        usermod $prefix -a -G dialout "$USER_NAME"
        log "added $USER_NAME to dialout (the RS-485 adapters)"
    fi
    KUID=$(id_of passwd "$USER_NAME")
    KGID=$(id_of group "$USER_NAME")
}

# restore cmdline.txt: the saved original when only our hook was added, else cut the hook out
restore_cmdline() {
    cmdline="$BOOT/cmdline.txt"
    [ -f "$B/cmdline.hook" ] && [ -f "$cmdline" ] || return 0
    hook=$(cat "$B/cmdline.hook")
    current=$(cat "$cmdline")
    case " $current " in
        *" $hook "*) ;;
        *) return 0 ;;
    esac
    if [ -f "$B/cmdline.txt.orig" ] && [ "$current" = "$(cat "$B/cmdline.txt.orig") $hook" ]; then
        cp "$B/cmdline.txt.orig" "$cmdline.kemon-new"
    else
        printf '%s\n' "$current" | awk -v h="$hook" '{ s = " " $0 " "; i = index(s, " " h " ");
            s = substr(s, 1, i) substr(s, i + length(h) + 2); gsub(/^ +| +$/, "", s); print s }' \
            > "$cmdline.kemon-new"
    fi
    mv -f "$cmdline.kemon-new" "$cmdline"
    sync
    log "restored $cmdline"
}

install_units() {
    [ -d "$B/systemd" ] || return 0
    mkdir -p "$ROOT/etc/systemd/system"
    for unit in "$B"/systemd/*.service; do
        [ -f "$unit" ] || continue
        name=${unit##*/}
        install_file "$unit" "$ROOT/etc/systemd/system/$name" 0644 0 0
        log "installed /etc/systemd/system/$name"
        if [ ! -x "$ROOT$BIN" ]; then
            log "warning: $BIN is missing: $name is installed but not enabled; install Kemon," \
                "then: systemctl enable --now $name"
            continue
        fi
        if [ -n "$ROOT" ]; then
            systemctl --root="$ROOT" --quiet enable "$name"
        else
            systemctl daemon-reload
            systemctl --quiet enable "$name"
            if [ "${KEMON_START:-0}" = 1 ]; then systemctl --no-block start "$name"; fi
        fi
        log "enabled $name"
    done
}

install_udev_rules() {
    [ -d "$B/udev" ] || return 0
    (umask 022 && mkdir -p "$ROOT/etc/udev/rules.d")
    for rules in "$B"/udev/*.rules; do
        [ -f "$rules" ] || continue
        install_file "$rules" "$ROOT/etc/udev/rules.d/${rules##*/}" 0644 0 0
        log "installed /etc/udev/rules.d/${rules##*/}"
    done
    [ -z "$ROOT" ] && command -v udevadm >/dev/null || return 0
    # udevadm(8): reload the rules, then replay the serial ports' events so /dev/rs485-N appear
    if udevadm control --reload && udevadm trigger --subsystem-match=tty; then
        log "udev re-read its rules and re-applied them to the serial ports"
    else
        log "warning: udevadm could not apply the rules now; they apply from the next boot"
    fi
}

NFT_RULES=/etc/nftables.d/kemon-gateway.nft
NFT_CONF=/etc/nftables.conf                 # what Debian's nftables.service loads at boot
NFT_INCLUDE="include \"$NFT_RULES\""

install_firewall() {
    [ -f "$B/nftables/kemon-gateway.nft" ] || return 0
    (umask 022 && mkdir -p "$ROOT/etc/nftables.d")
    install_file "$B/nftables/kemon-gateway.nft" "$ROOT$NFT_RULES" 0644 0 0
    log "installed $NFT_RULES"
    conf=$ROOT$NFT_CONF
    if [ ! -f "$conf" ]; then
        printf '#!/usr/sbin/nft -f\n' >"$conf.kemon-new"
        chmod 0755 "$conf.kemon-new"        # executable, like the one Debian's package ships
        mv -f "$conf.kemon-new" "$conf"
        log "created $NFT_CONF"
    fi
    if ! grep -qxF "$NFT_INCLUDE" "$conf"; then
        cp -p "$conf" "$conf.kemon-new"     # keeps its owner and mode
        # a newline first when the file does not end in one
        if [ -n "$(tail -c 1 "$conf")" ]; then echo >>"$conf.kemon-new"; fi
        printf '%s\n' "$NFT_INCLUDE" >>"$conf.kemon-new"
        mv -f "$conf.kemon-new" "$conf"
        log "added $NFT_INCLUDE to $NFT_CONF"
    fi
    # enabled for every boot; a failure here must not keep the gateway from coming up
    if [ -n "$ROOT" ]; then set -- --root="$ROOT"; else set --; fi
    if systemctl "$@" --quiet enable nftables.service; then
        log "enabled nftables.service (loads $NFT_CONF at boot)"
    else
        log "warning: could not enable nftables.service (is the nftables package installed?):" \
            "the firewall is installed but not loaded at boot; apt install nftables," \
            "then: systemctl enable nftables"
    fi
    [ -z "$ROOT" ] || return 0
    if ! command -v nft >/dev/null; then
        log "warning: nft is not installed: the firewall is NOT active; apt install nftables"
    elif out=$(nft -f "$NFT_RULES" 2>&1); then
        log "loaded $NFT_RULES: the firewall is active"
    else
        log "warning: nft could not load $NFT_RULES: the firewall is NOT active; fix the file" \
            "and run: nft -f $NFT_RULES; nft said: $out"
    fi
}

main() {
    find_boot
    if [ -n "$BOOT" ]; then rm -rf "$BOOT/kemon.done"; fi
    if [ -z "$BOOT" ] || [ ! -d "$BOOT/kemon" ]; then
        log "no kemon/ bundle on ${BOOT:-/boot/firmware or /boot}: nothing to do"
        return 0
    fi
    B=$BOOT/kemon
    ETC=$ROOT/etc/kemon
    mkdir -p "$ROOT/var/log"
    LOGFILE=$ROOT/var/log/kemon-firstboot.log   # the journal may not outlive the reboot
    log "installing the bundle from $B into ${ROOT:-/}"

    for f in gateway.toml gateway.pem ca.pem SHA256SUMS; do
        [ -f "$B/$f" ] || die "$B/$f is missing; provision the card again"
    done
    # gateway.key leaves the boot partition first: a run interrupted after that finds it
    # installed already
    if [ ! -f "$B/gateway.key" ] && [ ! -f "$ETC/tls/gateway.key" ]; then
        die "$B/gateway.key is missing and none is installed; provision the card again"
    fi
    (cd "$B" && sha256sum --check --quiet --ignore-missing SHA256SUMS) \
        || die "$B does not match its SHA256SUMS (a damaged card?); provision it again"

    ensure_user
    mkdir -p "$ETC/tls"
    chmod 0755 "$ETC" "$ETC/tls"
    install_file "$B/gateway.toml" "$ETC/gateway.toml" 0640 0 "$KGID"
    install_file "$B/ca.pem" "$ETC/tls/ca.pem" 0644 0 0
    install_file "$B/gateway.pem" "$ETC/tls/gateway.pem" 0644 0 0
    if [ -f "$B/gateway.key" ]; then
        install_file "$B/gateway.key" "$ETC/tls/gateway.key" 0640 0 "$KGID"
    fi
    log "installed /etc/kemon/gateway.toml and /etc/kemon/tls/{ca.pem,gateway.pem,gateway.key}"
    mkdir -p "$ROOT/var/lib/kemon"
    chown "$KUID:$KGID" "$ROOT/var/lib/kemon"
    chmod 0750 "$ROOT/var/lib/kemon"
    install_units
    install_udev_rules
    install_firewall
    sync

    for f in gateway.toml tls/ca.pem tls/gateway.pem; do
        cmp -s "$B/${f#tls/}" "$ETC/$f" || die "$ETC/$f differs from the bundle after installing"
    done
    if [ -f "$B/gateway.key" ]; then
        cmp -s "$B/gateway.key" "$ETC/tls/gateway.key" || die "the installed key differs"
        rm -f "$B/gateway.key"
        sync
        log "removed the private key from the boot partition"
    fi
    restore_cmdline
    mv "$B" "$BOOT/kemon.done"          # no half-deleted kemon/ for a later run to trip on
    rm -rf "$BOOT/kemon.done"
    sync
    log "removed $B; done: kemon-gateway reads /etc/kemon/gateway.toml"
}

main "$@"
exit 0
