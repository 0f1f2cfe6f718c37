# python-docker-mcp installer: runs in a short-lived installer container as
#   python3 -c <this file> '<json settings>'
# The target volume is mounted at /target and the download cache at /cache. Packages are
# installed into a staging directory first and moved into /target only when the installer
# succeeded, so a failed or killed install leaves the environment as it was (a stale
# staging directory is hidden, not importable, and removed by the next install).
import json
import os
import shutil
import subprocess
import sys
import time
import uuid


def mark(phase):
    """A timestamp the daemon logs at debug level (where an install's time goes)."""
    print(f"timing: {phase} {time.time():.3f}", flush=True)


mark("start")
settings = json.loads(sys.argv[1])
target = "/target"
for name in os.listdir(target):
    if name.startswith(".staging-"):
        shutil.rmtree(os.path.join(target, name), ignore_errors=True)
staging = os.path.join(target, ".staging-" + uuid.uuid4().hex)
os.mkdir(staging)

uv = shutil.which("uv") if settings["installer"] == "uv" else None
index = []
if settings.get("index_url"):
    index += ["--index-url", settings["index_url"]]
for url in settings["extra_index_urls"]:
    index += ["--extra-index-url", url]
requirements = settings["requirements"]
only_binary = settings["only_binary"]

print("installer: " + ("uv" if uv else "pip"), flush=True)
if settings["installer"] == "uv" and not uv:
    print("note: uv is not in the image; using pip", flush=True)

# The wheelhouse: wheel files in the cache volume, whatever index they came from. An
# install that the wheelhouse satisfies never asks the index (an unpinned requirement
# gets the cached version; pin one to move on).
wheels = "/cache/wheels"
os.makedirs(wheels, exist_ok=True)


def normal(name):
    """`Foo_Bar.baz` -> `foo-bar-baz` (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def report_cached(staged):
    """Name the wheelhouse files the staged distributions came from."""
    have = {}
    for f in os.listdir(wheels):
        if f.endswith(".whl"):
            parts = f.split("-")
            have[(normal(parts[0]), parts[1])] = f
    for name in sorted(os.listdir(staged)):
        if name.endswith(".dist-info"):
            dist, version = name[: -len(".dist-info")].rsplit("-", 1)
            if (normal(dist), version) in have:
                print("cached: " + have[(normal(dist), version)], flush=True)


def echo(done):
    """Pass a step's output on (uv's deprecation notices about our own settings left out)."""
    sys.stdout.write(done.stdout)
    sys.stdout.flush()
    err = [l for l in done.stderr.splitlines(True) if not l.startswith("warning: The `UV_")]
    sys.stderr.write("".join(err))
    sys.stderr.flush()


def restage():
    shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging)


def download(url, sha256, dest):
    """Fetch one wheel into the wheelhouse: checked against the lock's hash, then renamed
    into place, so a reader never sees half a file. True when it was there already."""
    import hashlib
    import ssl
    import urllib.parse
    import urllib.request

    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    if os.path.exists(dest) and (not sha256 or digest(dest) == sha256):
        return True
    parsed = urllib.parse.urlsplit(url)
    request = urllib.request.Request(url, headers={"User-Agent": "python-docker-mcp installer"})
    # Credentials given in an index URL serve that host's files too.
    for index_url in [settings.get("index_url") or ""] + settings["extra_index_urls"]:
        i = urllib.parse.urlsplit(index_url)
        if i.username and i.hostname == parsed.hostname:
            import base64
            token = base64.b64encode(f"{urllib.parse.unquote(i.username)}:{urllib.parse.unquote(i.password or '')}".encode()).decode()
            request.add_header("Authorization", "Basic " + token)
    context = None
    if parsed.hostname in settings["trusted_hosts"]:
        context = ssl._create_unverified_context()
    partial = dest + ".part-" + uuid.uuid4().hex
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as answer, open(partial, "wb") as out:
            shutil.copyfileobj(answer, out, 1 << 20)
        if sha256 and digest(partial) != sha256:
            raise OSError(f"{os.path.basename(dest)} does not match the hash the index gave")
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return False


def fetch_locked():
    """Resolve against the index (uv pip compile, for this interpreter, wheels only) and
    bring every wheel of the resolution into the wheelhouse. Returns the pinned
    requirements, or None when that route is not open (an older uv, a package without a
    wheel for this interpreter): the caller then installs straight from the index."""
    import tomllib

    lock = os.path.join("/tmp", "pylock." + uuid.uuid4().hex + ".toml")
    compile_ = [uv, "pip", "compile", "--quiet", "--format", "pylock.toml", "--python", sys.executable,
                "--only-binary", ":all:", "--output-file", lock] + index + insecure + ["-"]
    done = subprocess.run(compile_, input="\n".join(requirements) + "\n", capture_output=True, text=True,
                          env=uv_env)
    mark("resolved")
    if done.returncode != 0:
        return None
    with open(lock, "rb") as f:
        packages = tomllib.load(f).get("packages", [])
    pinned = []
    for package in packages:
        files = package.get("wheels") or []
        if not files:
            return None
        wheel = files[0]
        name = wheel.get("name") or urllib_name(wheel["url"])
        dest = os.path.join(wheels, name)
        try:
            cached = download(wheel["url"], wheel.get("hashes", {}).get("sha256"), dest)
        except (OSError, ValueError) as e:
            print(f"ERROR: downloading {name} failed: {e}", file=sys.stderr, flush=True)
            shutil.rmtree(staging, ignore_errors=True)
            sys.exit(1)
        print(("cached: " if cached else "downloaded: ") + name, flush=True)
        pinned.append(f"{package['name']}=={package['version']}")
    return pinned


def urllib_name(url):
    import urllib.parse
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


if uv:
    uv_env = dict(os.environ, UV_SYSTEM_CERTS="1", UV_NATIVE_TLS="1", UV_CACHE_DIR="/cache/uv",
                  UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
    insecure = [arg for host in settings["trusted_hosts"] for arg in ("--allow-insecure-host", host)]
    binary = ["--only-binary", ":all:"] if only_binary else []
    # Files are copied out of uv's cache, never hard-linked: the cache volume and the
    # target volume share no inode.
    install = [uv, "pip", "install", "--python", sys.executable, "--target", staging, "--link-mode", "copy"]
    from_wheelhouse = install + ["--offline", "--no-index", "--find-links", wheels] + binary
    offline = subprocess.run(from_wheelhouse + requirements, capture_output=True, text=True, env=uv_env)
    mark("wheelhouse")
    if offline.returncode == 0:
        print("from the download cache only", flush=True)
        echo(offline)
        report_cached(staging)
        steps = []
    else:
        restage()
        pinned = fetch_locked() if only_binary else None
        mark("fetched")
        if pinned is not None:
            # Exactly the resolution, from the wheelhouse.
            steps = [from_wheelhouse + ["--no-deps"] + pinned]
        else:
            steps = [install + index + insecure + binary + requirements]
else:
    # A wheelhouse in the cache volume: `pip download` skips files it already has ("File
    # was already downloaded"), whatever caching headers the index (or a proxy) sends;
    # the install then reads only the wheelhouse.
    pip = [sys.executable, "-m", "pip", "--no-input", "--disable-pip-version-check", "--no-cache-dir"]
    binary = ["--only-binary=:all:"] if only_binary else []
    trusted = [arg for host in settings["trusted_hosts"] for arg in ("--trusted-host", host)]
    install = pip + ["install", "--root-user-action=ignore", "--no-index", "--find-links", wheels,
                     "--target", staging] + binary + requirements
    # Offline first: when the wheelhouse already satisfies the request, the index is not
    # asked at all.
    offline = subprocess.run(install, capture_output=True, text=True)
    mark("wheelhouse")
    if offline.returncode == 0:
        print("from the download cache only", flush=True)
        sys.stdout.write(offline.stdout)
        sys.stdout.flush()
        steps = []
    else:
        restage()
        steps = [pip + ["download", "--dest", wheels] + binary + index + trusted + requirements, install]

for step in steps:
    done = subprocess.run(step, capture_output=True, text=True, env=uv_env if uv else None)
    echo(done)
    mark("step")
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        sys.exit(done.returncode)


def project(dist_info):
    """`Foo_Bar-1.2.dist-info` -> `foo-bar`."""
    return dist_info[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("_", "-").replace(".", "-")


# uv's lock on the environment it installed into is not part of any package.
if os.path.isfile(os.path.join(staging, ".lock")):
    os.remove(os.path.join(staging, ".lock"))

# A newer version replaces the older one's files and metadata.
installed = [n for n in os.listdir(target) if n.endswith(".dist-info")]
for name in os.listdir(staging):
    if name.endswith(".dist-info"):
        for old in installed:
            if project(old) == project(name):
                shutil.rmtree(os.path.join(target, old), ignore_errors=True)
for name in os.listdir(staging):
    dst = os.path.join(target, name)
    if os.path.isdir(dst) and not os.path.islink(dst):
        shutil.rmtree(dst)
    elif os.path.lexists(dst):
        os.remove(dst)
    os.rename(os.path.join(staging, name), dst)
os.rmdir(staging)
mark("moved")
