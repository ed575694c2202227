// A slow disk for benchmarks/cold_read.py: a read-only FUSE view of one folder in which every
// read waits a fixed latency before it is served (from the real file, usually in the page cache),
// with at most QUEUE reads in service at once, like a device's queue: QUEUE serving threads, and
// the kernel's limit on FUSE's background (read-ahead) requests raised from its default 12.
//   cc -O2 slow_disk.c $(pkg-config --cflags --libs fuse3) -o slow_disk
//   ./slow_disk SOURCE_DIR MOUNTPOINT LATENCY_US QUEUE [fuse options, e.g. -f]
// Needs /dev/fuse and the right to mount (root, or fusermount3); unmount with fusermount3 -u.
#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *source_dir;
static long latency_us;
static unsigned queue_depth;

static void *sd_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)cfg;
    conn->max_background = queue_depth;
    conn->congestion_threshold = queue_depth;
    return NULL;
}

static void real_path(char *out, const char *path) { snprintf(out, PATH_MAX, "%s%s", source_dir, path); }

static int sd_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    char p[PATH_MAX];
    real_path(p, path);
    return lstat(p, st) == 0 ? 0 : -errno;
}

static int sd_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)off, (void)fi, (void)flags;
    char p[PATH_MAX];
    real_path(p, path);
    DIR *d = opendir(p);
    if (!d) return -errno;
    for (struct dirent *e; (e = readdir(d)) != NULL;) fill(buf, e->d_name, NULL, 0, 0);
    closedir(d);
    return 0;
}

static int sd_open(const char *path, struct fuse_file_info *fi) {
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    char p[PATH_MAX];
    real_path(p, path);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    fi->keep_cache = 1;  // the page cache is the benchmark's to drop (posix_fadvise), not each open's
    return 0;
}

static int sd_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    struct timespec wait = {latency_us / 1000000, (latency_us % 1000000) * 1000};
    nanosleep(&wait, NULL);
    ssize_t got = pread((int)fi->fh, buf, size, off);
    return got < 0 ? -errno : (int)got;
}

static int sd_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static const struct fuse_operations ops = {
    .init = sd_init, .getattr = sd_getattr, .readdir = sd_readdir, .open = sd_open, .read = sd_read,
    .release = sd_release,
};

int main(int argc, char **argv) {
    if (argc < 5 || atoi(argv[4]) < 1) {
        fprintf(stderr, "usage: %s SOURCE_DIR MOUNTPOINT LATENCY_US QUEUE [fuse options]\n", argv[0]);
        return 2;
    }
    static char source[PATH_MAX];
    if (!realpath(argv[1], source)) {
        perror(argv[1]);
        return 2;
    }
    source_dir = source;
    latency_us = atol(argv[3]);
    queue_depth = (unsigned)atoi(argv[4]);
    // fuse_main sees: prog MOUNTPOINT -o ro,...,max_threads=QUEUE [fuse options...]
    static char options[128];
    snprintf(options, sizeof options, "ro,default_permissions,max_threads=%u,max_idle_threads=%u", queue_depth,
             queue_depth);
    char *args[64];
    int n = 0;
    args[n++] = argv[0];
    args[n++] = argv[2];
    args[n++] = "-o";
    args[n++] = options;
    for (int i = 5; i < argc && n < 63; ++i) args[n++] = argv[i];
    args[n] = NULL;
    return fuse_main(n, args, &ops, NULL);
}
