//! Space and inodes of each mounted filesystem (the mount table from `/proc/self/mounts`, the
//! figures from `statvfs`), and bytes read and written by each whole block device (counters from
//! `/proc/diskstats`, which devices are whole from `/sys/block`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::{Collected, Collector, rate, read_proc_text, round2};
use crate::model::{Sample, metric};

/// Keeps a host with hundreds of bind or container mounts from flooding a batch.
const MAX_MOUNTS: usize = 64;
/// Same, for hosts with many device-mapper volumes.
const MAX_DEVICES: usize = 64;
/// `/proc/diskstats` counts in 512-byte sectors whatever the device's real sector size.
const SECTOR_BYTES: u64 = 512;

/// Kernel interfaces and memory-backed filesystems: they hold no data a person would watch fill
/// up, and there are dozens of them on a systemd host.
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nfsd",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Network filesystems, skipped by default: `statvfs` on one whose server hangs blocks in the
/// kernel (for hard NFS mounts, uninterruptibly and for as long as the server is away), which
/// would stall this collector and with it the agent's tick. Their usage belongs to the file
/// server's own agent anyway.
const NETWORK_FS: &[&str] = &["nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs"];

/// One line of `/proc/self/mounts`, with the octal escapes undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry<'a> {
    pub source: Cow<'a, str>,
    pub mount_point: Cow<'a, str>,
    pub fstype: &'a str,
}

pub(crate) fn parse_mounts(text: &str) -> impl Iterator<Item = MountEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let source = fields.next()?;
        let mount_point = fields.next()?;
        let fstype = fields.next()?;
        Some(MountEntry {
            source: unescape_mount_field(source),
            mount_point: unescape_mount_field(mount_point),
            fstype,
        })
    })
}

/// Undoes the kernel's escaping of space, tab, newline and backslash (and `#` on newer kernels)
/// as `\NNN` in octal. Borrows when there is nothing to undo, which is nearly always.
pub(crate) fn unescape_mount_field(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                // \400 and above do not fit a byte; the kernel never writes them, so keep the
                // text as it stands.
                match u8::try_from(value) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a filesystem type is worth a `statvfs`.
pub(crate) fn wanted_fstype(fstype: &str) -> bool {
    !PSEUDO_FS.contains(&fstype) && !NETWORK_FS.contains(&fstype)
}

/// What `statvfs` says about one filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsStats {
    pub total: u64,
    /// Free to root (`f_bfree`).
    pub free: u64,
    /// Free to ordinary users (`f_bavail`): `free` less the reserved blocks.
    pub available: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

impl FsStats {
    fn from_statvfs(st: &rustix::fs::StatVfs) -> Self {
        // f_frsize is the unit of the block counts; f_bsize is only the preferred I/O size, but
        // some old filesystems leave f_frsize 0.
        let unit = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Self {
            total: st.f_blocks.saturating_mul(unit),
            free: st.f_bfree.saturating_mul(unit),
            available: st.f_bavail.saturating_mul(unit),
            inodes_total: st.f_files,
            inodes_free: st.f_ffree,
        }
    }
}

/// One filesystem's usage, as the record's `data` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MountUsage {
    pub mount: String,
    pub device: String,
    pub fstype: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    pub inodes_total: u64,
    pub inodes_used: u64,
}

impl MountUsage {
    fn new(entry: &MountEntry<'_>, stats: FsStats) -> Self {
        let used = stats.total.saturating_sub(stats.free);
        // As df computes it: against the space users can actually have, so a disk whose free
        // space is all root-reserved shows 100%.
        let usable = used + stats.available;
        let used_percent = if usable > 0 {
            round2(used as f64 / usable as f64 * 100.0)
        } else {
            0.0
        };
        Self {
            mount: entry.mount_point.clone().into_owned(),
            device: entry.source.clone().into_owned(),
            fstype: entry.fstype.to_owned(),
            total_bytes: stats.total,
            used_bytes: used,
            available_bytes: stats.available,
            used_percent,
            inodes_total: stats.inodes_total,
            inodes_used: stats.inodes_total.saturating_sub(stats.inodes_free),
        }
    }
}

/// The filesystems worth reporting from a mount table, with `statfs` supplying the figures
/// (`None` when it fails). Pseudo and network filesystems are never asked about; empty ones (size
/// 0) and a device's second mount (bind mounts, btrfs subvolumes: the same space again) are
/// dropped.
pub(crate) fn mount_usages(
    mounts_text: &str,
    mut statfs: impl FnMut(&str) -> Option<FsStats>,
) -> Vec<MountUsage> {
    let mut usages: Vec<MountUsage> = Vec::new();
    for entry in parse_mounts(mounts_text) {
        if usages.len() >= MAX_MOUNTS {
            break;
        }
        if !wanted_fstype(entry.fstype) || usages.iter().any(|u| u.device == entry.source) {
            continue;
        }
        let Some(stats) = statfs(&entry.mount_point) else {
            continue;
        };
        if stats.total == 0 {
            continue;
        }
        usages.push(MountUsage::new(&entry, stats));
    }
    usages
}

/// One line of `/proc/diskstats`, counters in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskIo<'a> {
    pub name: &'a str,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

pub(crate) fn parse_diskstats(text: &str) -> impl Iterator<Item = DiskIo<'_>> {
    text.lines().filter_map(|line| {
        // major minor name reads merged sectors_read ms writes merged sectors_written ...
        let mut fields = line.split_ascii_whitespace();
        let name = fields.nth(2)?;
        let read_sectors: u64 = fields.nth(2)?.parse().ok()?;
        let write_sectors: u64 = fields.nth(3)?.parse().ok()?;
        Some(DiskIo {
            name,
            read_bytes: read_sectors.saturating_mul(SECTOR_BYTES),
            write_bytes: write_sectors.saturating_mul(SECTOR_BYTES),
        })
    })
}

/// Whether a whole block device is reported. Loop devices (one per snap package) and RAM disks
/// are noise; a zram device only matters once it is used (as swap, usually).
pub(crate) fn wanted_device(io: &DiskIo<'_>) -> bool {
    if io.name.starts_with("loop") || io.name.starts_with("ram") {
        return false;
    }
    if io.name.starts_with("zram") {
        return io.read_bytes > 0 || io.write_bytes > 0;
    }
    true
}

/// `/proc/diskstats` writes `cciss/c0d0` where `/sys/block` has `cciss!c0d0`.
fn sys_block_name(name: &str) -> Cow<'_, str> {
    if name.contains('/') {
        Cow::Owned(name.replace('/', "!"))
    } else {
        Cow::Borrowed(name)
    }
}

/// What is remembered of a block device between runs.
#[derive(Debug)]
struct DeviceState {
    /// In `/sys/block` (a disk, not a partition). Fixed for a name, so asked once.
    whole: bool,
    read_bytes: u64,
    write_bytes: u64,
    /// The run that last saw it, so vanished devices can be dropped.
    seen: u64,
}

#[derive(Debug, Serialize)]
struct DeviceData<'a> {
    device: &'a str,
    read_bytes_per_sec: Option<f64>,
    write_bytes_per_sec: Option<f64>,
    read_bytes_total: u64,
    write_bytes_total: u64,
}

/// Filesystem space and block-device throughput.
pub struct DiskCollector {
    buf: Vec<u8>,
    devices: HashMap<String, DeviceState>,
    run: u64,
    last_run: Option<Instant>,
}

impl DiskCollector {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(8 * 1024),
            devices: HashMap::new(),
            run: 0,
            last_run: None,
        }
    }
}

impl Default for DiskCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// Names in `/sys/block`; `None` when it cannot be listed (then no device is classified and the
/// next run asks again).
fn read_sys_block() -> Option<HashSet<String>> {
    match std::fs::read_dir("/sys/block") {
        Ok(dir) => Some(
            dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect(),
        ),
        Err(err) => {
            tracing::debug!(cause = %format!("{err:#}"), "cannot list /sys/block");
            None
        }
    }
}

fn statfs(mount_point: &str) -> Option<FsStats> {
    match rustix::fs::statvfs(mount_point) {
        Ok(st) => Some(FsStats::from_statvfs(&st)),
        Err(err) => {
            // Permission, a stale NFS handle, a mount gone since the table was read: skip it.
            tracing::debug!(mount = mount_point, cause = %format!("{err:#}"), "statvfs failed");
            None
        }
    }
}

impl Collector for DiskCollector {
    fn name(&self) -> &str {
        "disk"
    }

    fn collect(&mut self) -> anyhow::Result<Collected> {
        let now = Instant::now();
        let elapsed = self.last_run.map(|last| now.duration_since(last));
        self.last_run = Some(now);
        self.run += 1;
        let run = self.run;

        let mounts = mount_usages(&read_proc_text("/proc/self/mounts", &mut self.buf)?, statfs);
        let mut samples = Vec::with_capacity(mounts.len() * 6);
        for m in &mounts {
            for (name, value) in [
                ("disk.total_bytes", m.total_bytes as f64),
                ("disk.used_bytes", m.used_bytes as f64),
                ("disk.available_bytes", m.available_bytes as f64),
                (metric::DISK_USED_PERCENT, m.used_percent),
                ("disk.inodes_total", m.inodes_total as f64),
                ("disk.inodes_used", m.inodes_used as f64),
            ] {
                samples.push(Sample::new(name, value).with_label("mount", m.mount.as_str()));
            }
        }

        let text = read_proc_text("/proc/diskstats", &mut self.buf)?;
        // Listed at most once a run, and only when a device name is new: names and their kind
        // do not change, so steady state costs no directory read.
        let mut sys_block: Option<Option<HashSet<String>>> = None;
        let mut devices = Vec::new();
        for io in parse_diskstats(&text) {
            let (whole, rates) = match self.devices.get_mut(io.name) {
                Some(state) => {
                    let rates = match elapsed {
                        Some(elapsed) if state.seen + 1 == run => (
                            rate(state.read_bytes, io.read_bytes, elapsed).map(round2),
                            rate(state.write_bytes, io.write_bytes, elapsed).map(round2),
                        ),
                        _ => (None, None),
                    };
                    state.read_bytes = io.read_bytes;
                    state.write_bytes = io.write_bytes;
                    state.seen = run;
                    (state.whole, rates)
                }
                None => {
                    let listing = sys_block.get_or_insert_with(read_sys_block);
                    let Some(listing) = listing else {
                        continue;
                    };
                    let whole = listing.contains(sys_block_name(io.name).as_ref());
                    self.devices.insert(
                        io.name.to_owned(),
                        DeviceState {
                            whole,
                            read_bytes: io.read_bytes,
                            write_bytes: io.write_bytes,
                            seen: run,
                        },
                    );
                    (whole, (None, None))
                }
            };
            if !whole || !wanted_device(&io) || devices.len() >= MAX_DEVICES {
                continue;
            }
            let (read_rate, write_rate) = rates;
            let label =
                |name: &str, value: f64| Sample::new(name, value).with_label("device", io.name);
            if let Some(value) = read_rate {
                samples.push(label("disk.read_bytes_per_sec", value));
            }
            if let Some(value) = write_rate {
                samples.push(label("disk.write_bytes_per_sec", value));
            }
            samples.push(label("disk.read_bytes_total", io.read_bytes as f64));
            samples.push(label("disk.write_bytes_total", io.write_bytes as f64));
            devices.push(DeviceData {
                device: io.name,
                read_bytes_per_sec: read_rate,
                write_bytes_per_sec: write_rate,
                read_bytes_total: io.read_bytes,
                write_bytes_total: io.write_bytes,
            });
        }
        self.devices.retain(|_, state| state.seen == run);

        let data = serde_json::json!({ "mounts": mounts, "devices": devices });
        Ok(Collected {
            data,
            samples,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid 0 0
/dev/vda1 /srv/bind ext4 rw,relatime 0 0
/dev/vdb1 /mnt/my\\040disk xfs rw 0 0
server:/export /mnt/nfs nfs4 rw,hard 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
lxcfs /var/lib/lxcfs fuse.lxcfs rw 0 0
/dev/vdc1 /gone ext4 rw 0 0
";

    #[test]
    fn mount_fields_are_unescaped() {
        let entries: Vec<_> = parse_mounts(MOUNTS).collect();
        assert_eq!(entries.len(), 11);
        assert_eq!(entries[5].mount_point, "/mnt/my disk");
        assert!(matches!(entries[2].mount_point, Cow::Borrowed("/")));
        assert_eq!(unescape_mount_field(r"/a\011b\012c\134d"), "/a\tb\nc\\d");
        assert_eq!(unescape_mount_field(r"/x\043y"), "/x#y");
        // Not an escape: left as it is.
        assert_eq!(unescape_mount_field(r"/odd\x\12"), r"/odd\x\12");
        assert_eq!(unescape_mount_field(r"/caf\303\251"), "/café");
    }

    fn fake_stats(total: u64) -> FsStats {
        FsStats {
            total,
            free: total / 2,
            available: total / 2 - total / 20,
            inodes_total: 1000,
            inodes_free: 600,
        }
    }

    #[test]
    fn usages_skip_pseudo_network_duplicate_empty_and_failing_filesystems() {
        let mut asked = Vec::new();
        let usages = mount_usages(MOUNTS, |path| {
            asked.push(path.to_owned());
            match path {
                "/var/lib/lxcfs" => Some(fake_stats(0)),
                "/gone" => None,
                _ => Some(fake_stats(1_000_000)),
            }
        });
        let mounts: Vec<_> = usages.iter().map(|u| u.mount.as_str()).collect();
        assert_eq!(
            mounts,
            ["/", "/mnt/my disk", "/var/lib/docker/overlay2/abc/merged"]
        );
        assert!(
            !asked.iter().any(|p| p == "/mnt/nfs"),
            "NFS is never statted"
        );
        assert!(!asked.iter().any(|p| p == "/proc" || p == "/run"));
        assert_eq!(usages[1].device, "/dev/vdb1");
        assert_eq!(usages[1].fstype, "xfs");
    }

    #[test]
    fn used_percent_is_against_the_space_users_can_have() {
        let entry = MountEntry {
            source: "/dev/sda1".into(),
            mount_point: "/".into(),
            fstype: "ext4",
        };
        let usage = MountUsage::new(
            &entry,
            FsStats {
                total: 1000,
                free: 200,
                available: 150,
                inodes_total: 100,
                inodes_free: 30,
            },
        );
        assert_eq!(usage.used_bytes, 800);
        assert_eq!(usage.available_bytes, 150);
        assert_eq!(usage.used_percent, round2(800.0 / 950.0 * 100.0));
        assert_eq!(usage.inodes_used, 70);
        // All the free space reserved for root: full, as far as users are concerned.
        let full = MountUsage::new(
            &entry,
            FsStats {
                total: 1000,
                free: 50,
                available: 0,
                inodes_total: 0,
                inodes_free: 0,
            },
        );
        assert_eq!(full.used_percent, 100.0);
    }

    #[test]
    fn mounts_are_capped() {
        let text: String = (0..100)
            .map(|i| format!("/dev/sd{i} /m{i} ext4 rw 0 0\n"))
            .collect();
        assert_eq!(
            mount_usages(&text, |_| Some(fake_stats(10))).len(),
            MAX_MOUNTS
        );
    }

    #[test]
    fn diskstats_in_bytes() {
        let text = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 28781 4922 2356778 14278 25225 40015 3950848 50426 0 10636 66229 10044 12 981776 1300 4736 224
 254       1 vda1 100 0 2000 10 50 0 800 5 0 10 15
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 104       0 cciss/c0d0 1 0 8 0 1 0 16 0 0 0 0
   8       0 sda 1 2
";
        let ios: Vec<_> = parse_diskstats(text).collect();
        assert_eq!(ios.len(), 5, "the short sda line is skipped");
        assert_eq!(ios[1].name, "vda");
        assert_eq!(ios[1].read_bytes, 2_356_778 * 512);
        assert_eq!(ios[1].write_bytes, 3_950_848 * 512);
        assert_eq!(ios[2].write_bytes, 800 * 512);
        assert!(!wanted_device(&ios[0]), "loop");
        assert!(wanted_device(&ios[1]));
        assert!(!wanted_device(&ios[3]), "idle zram");
        assert!(wanted_device(&DiskIo {
            name: "zram0",
            read_bytes: 0,
            write_bytes: 4096,
        }));
        assert!(wanted_device(&DiskIo {
            name: "dm-0",
            read_bytes: 0,
            write_bytes: 0,
        }));
        assert_eq!(sys_block_name(ios[4].name), "cciss!c0d0");
    }

    #[test]
    fn wanted_fstypes() {
        assert!(wanted_fstype("ext4"));
        assert!(wanted_fstype("overlay"));
        assert!(wanted_fstype("btrfs"));
        for skipped in [
            "tmpfs",
            "proc",
            "cgroup2",
            "squashfs",
            "nfs",
            "cifs",
            "fuse.sshfs",
        ] {
            assert!(!wanted_fstype(skipped), "{skipped}");
        }
    }

    #[test]
    fn collects_this_host() {
        let mut collector = DiskCollector::new();
        let first = collector.collect().unwrap();
        assert!(!first.samples.iter().any(|s| s.name.ends_with("_per_sec")));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let second = collector.collect().unwrap();
        let root = second.data["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mount"] == "/")
            .expect("a mount \"/\"");
        assert!(root["total_bytes"].as_u64().unwrap() > 0);
        let pct = root["used_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct));
        assert!(
            second
                .samples
                .iter()
                .any(|s| s.name == metric::DISK_USED_PERCENT
                    && s.labels.get("mount").map(String::as_str) == Some("/"))
        );
        for device in second.data["devices"].as_array().unwrap() {
            let name = device["device"].as_str().unwrap();
            assert!(!name.starts_with("loop"), "{name}");
            assert!(device["read_bytes_per_sec"].as_f64().unwrap() >= 0.0);
        }
        for sample in &second.samples {
            assert!(sample.value.is_finite(), "{}", sample.name);
        }
    }
}
