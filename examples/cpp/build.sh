#!/usr/bin/env bash
# Build the fastsim C++ embedding example with one command.
#
#   examples/cpp/build.sh [BUILD_DIR]        (default: examples/cpp/build)
#
# ONNX Runtime: an existing install when onnxruntime_ROOT names one (a release
# tarball, a CVMFS view, an EL9 package prefix: include/[onnxruntime/]onnxruntime_cxx_api.h
# and lib[64]/libonnxruntime.so.X.Y.Z), headers and library both from it.
# Otherwise headers from the Debian 13 (trixie) package libonnxruntime-dev, fetched
# with apt into examples/cpp/third_party/ (git-ignored) and unpacked with dpkg-deb -x
# (a private sources list, package lists and cache: nothing is installed and the
# machine's apt state is untouched), and the library libonnxruntime.so.* from the
# onnxruntime Python wheel that $PYTHON imports, so the binary runs the very library
# the Python runtime uses. nlohmann/json likewise: nlohmann_json_ROOT, else
# /usr/include or /usr/local/include (EL9: json-devel), else the Debian package.
# An rpath makes the binary run without LD_LIBRARY_PATH.
#
# Environment:
#   onnxruntime_ROOT        an ONNX Runtime install to build against (no apt needed)
#   nlohmann_json_ROOT      a prefix holding include/nlohmann/json.hpp
#   PYTHON                  interpreter whose onnxruntime wheel provides the library
#                           (default: the repository's .venv, else python3)
#   FASTSIM_DEBIAN_MIRROR   Debian mirror (default: the one in the machine's apt sources)
#   FASTSIM_WITH_CUDA=ON    compile the CUDA execution-provider option
#   FASTSIM_THIRD_PARTY     header cache directory (default: examples/cpp/third_party)
#
# Exit status: 0 built; 75 the headers could not be downloaded (no network to
# the Debian mirror); 2 a missing tool or a bad onnxruntime_ROOT; anything else
# is a build error. Safe to re-run: the header download is cached and the build
# is incremental.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build_dir=${1:-$here/build}
third_party=${FASTSIM_THIRD_PARTY:-$here/third_party}
suite=trixie
packages=(libonnxruntime-dev nlohmann-json3-dev)

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi

say() { echo "build.sh: $*" >&2; }

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { say "'$tool' is required but not on PATH"; exit 2; }
done

# An existing ONNX Runtime install: headers and library from onnxruntime_ROOT.
ort_root=${onnxruntime_ROOT:-}
ort_include=
ort_library=
if [[ -n $ort_root ]]; then
    for dir in "$ort_root/include/onnxruntime" "$ort_root/include"; do
        if [[ -f $dir/onnxruntime_cxx_api.h ]]; then ort_include=$dir; break; fi
    done
    if [[ -z $ort_include ]]; then
        say "onnxruntime_ROOT=$ort_root: no include/onnxruntime_cxx_api.h or include/onnxruntime/onnxruntime_cxx_api.h"
        exit 2
    fi
    ort_library=$(ls "$ort_root"/lib/libonnxruntime.so.*.*.* "$ort_root"/lib64/libonnxruntime.so.*.*.* 2>/dev/null |
        sort -V | tail -n 1 || true)
    if [[ -z $ort_library ]]; then
        say "onnxruntime_ROOT=$ort_root: no lib/libonnxruntime.so.X.Y.Z or lib64/libonnxruntime.so.X.Y.Z"
        exit 2
    fi
    say "ONNX Runtime from onnxruntime_ROOT=$ort_root"
fi
json_include=
for prefix in ${nlohmann_json_ROOT:-} /usr /usr/local; do
    if [[ -f $prefix/include/nlohmann/json.hpp ]]; then json_include=$prefix/include; break; fi
done

# The mirror the machine already uses for its own Debian release (the first
# deb822 .sources stanza or sources.list line for its codename), so CI behind
# a mirror keeps working.
debian_mirror() {
    if [[ -n ${FASTSIM_DEBIAN_MIRROR:-} ]]; then echo "$FASTSIM_DEBIAN_MIRROR"; return; fi
    local uri codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    uri=$(awk -v codename="$codename" '
        function flush() { if (!done && ok && !off && first != "") { print first; done = 1 } first = ""; ok = off = 0 }
        FNR == 1 || /^[[:space:]]*$/ { flush() }
        /^URIs:/ { if (first == "") first = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == codename) ok = 1 }
        /^Enabled:[[:space:]]*no/ { off = 1 }
        END { flush() }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' | awk -v codename="$codename" '$1 == "deb" && $3 == codename { print $2; exit }' || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Headers: download once, unpack into a temporary directory, then move into place.
fetch_headers() {
    local include=$third_party/usr/include
    if [[ -f $third_party/.complete ]]; then return; fi
    local mirror apt_dir arch
    mirror=$(debian_mirror)
    arch=$(dpkg --print-architecture)
    apt_dir=$third_party/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$third_party/debs"
    echo "deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
        >"$apt_dir/sources.list"
    local apt_opts=(
        -q -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
        -o "Acquire::Languages=none" -o "APT::Sandbox::User=root"
        -o "Acquire::Retries=1" -o "Acquire::http::Timeout=20"
    )
    say "fetching ${packages[*]} ($suite) from $mirror"
    if ! apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 ||
        grep -qE '^(W|E): Failed to fetch' "$apt_dir/update.log"; then
        cat "$apt_dir/update.log" >&2
        say "could not reach the Debian mirror $mirror for the ONNX Runtime headers"
        exit 75
    fi
    if ! (cd "$third_party/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}" >&2); then
        say "could not download ${packages[*]} from $mirror"
        exit 75
    fi
    local staging
    staging=$(mktemp -d "$third_party/.staging.XXXXXX")
    for deb in "$third_party"/debs/*.deb; do dpkg-deb -x "$deb" "$staging"; done
    # MIT (Expat) licence notices travel with the headers.
    cp "$staging/usr/share/doc/libonnxruntime-dev/copyright" "$staging/usr/include/onnxruntime/COPYRIGHT"
    cp "$staging/usr/share/doc/nlohmann-json3-dev/copyright" "$staging/usr/include/nlohmann/COPYRIGHT"
    rm -rf "$third_party/usr"
    mv "$staging/usr" "$third_party/usr"
    rm -rf "$staging"
    rm -rf "$apt_dir/lists" "$apt_dir/cache"  # ~25 MB of package lists, not needed again
    (cd "$third_party/debs" && ls *.deb) >"$third_party/.complete"
    say "headers in $include ($(tr '\n' ' ' <"$third_party/.complete"))"
}

if [[ -z $ort_include || -z $json_include ]]; then
    for tool in apt-get dpkg-deb; do
        if ! command -v "$tool" >/dev/null; then
            say "'$tool' is not on PATH, and the headers must come from Debian packages: set onnxruntime_ROOT to an"
            say "ONNX Runtime install (and nlohmann_json_ROOT to a prefix with include/nlohmann/json.hpp)"
            exit 2
        fi
    done
    mkdir -p "$third_party"
    exec 9>"$third_party/.lock"
    flock 9  # two builds at once (parallel test sessions) share one download
    fetch_headers
    flock -u 9
    ort_include=${ort_include:-$third_party/usr/include/onnxruntime}
    json_include=${json_include:-$third_party/usr/include}
fi

if [[ -z $ort_library ]]; then
ort_library=$("$PYTHON" - <<'EOF'
import glob, os, sys
try:
    import onnxruntime
except ImportError as error:
    sys.exit(f"build.sh: PYTHON cannot import onnxruntime ({error})")
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
found = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.*")))
if not found:
    sys.exit(f"build.sh: no libonnxruntime.so.* in {capi}")
print(found[-1])
EOF
)
fi
say "ONNX Runtime headers: $ort_include; library: $ort_library"

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
if [[ -f $build_dir/CMakeCache.txt ]]; then generator=(); fi  # keep the generator it was made with
cmake -S "$here" -B "$build_dir" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DONNXRUNTIME_INCLUDE_DIR="$ort_include" \
    -DONNXRUNTIME_LIBRARY="$ort_library" \
    -DNLOHMANN_JSON_INCLUDE_DIR="$json_include" \
    -DFASTSIM_WITH_CUDA="${FASTSIM_WITH_CUDA:-OFF}" >&2
cmake --build "$build_dir" --parallel "${JOBS:-2}" >&2
echo "$build_dir/fastsim-cpp"
