#!/usr/bin/env bash
# Build Shoal's Java model wrapper, and optionally a model that uses it.
#
#   wrappers/java/build.sh                          the wrapper: build/shoal-wrapper.jar
#   wrappers/java/build.sh --model SRC --out LIB [--jar NAME]
#       also compiles the model's sources (every .java under SRC, and any resources beside
#       them) into LIB/NAME (default model.jar), and puts the wrapper and Jackson jars beside
#       it, so that `java -cp "LIB/*" your.ModelClass` runs it from anywhere LIB is copied.
#
# Needs a JDK 17+ (javac, jar: Debian's openjdk-17-jdk-headless) and Jackson (Debian's
# libjackson2-databind-java, in /usr/share/java; JACKSON_DIR names another folder holding
# jackson-databind.jar, jackson-core.jar and jackson-annotations.jar). No Maven, no network.
# The wrapper is rebuilt only when a source is newer than its jar.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jackson_dir="${JACKSON_DIR:-/usr/share/java}"
build="$here/build"
model_src="" out="" jar_name="model.jar"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "build.sh: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) model_src="${2:?--model needs a folder}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --jar) jar_name="${2:?--jar needs a file name}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build.sh: unknown argument $1" >&2; usage ;;
  esac
done
if [ -n "$model_src" ] && [ -z "$out" ]; then fail "--model needs --out LIB (where the jars go)"; fi
if [ -z "$model_src" ] && [ -n "$out" ]; then fail "--out needs --model SRC (the model's sources)"; fi

for tool in javac jar; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$tool is missing: install a JDK 17 or later (Debian: apt-get install openjdk-17-jdk-headless)"
done
jackson=()
for name in jackson-databind jackson-core jackson-annotations; do
  [ -f "$jackson_dir/$name.jar" ] ||
    fail "$jackson_dir/$name.jar is missing: install Jackson (Debian: apt-get install libjackson2-databind-java), or set JACKSON_DIR to the folder that has it"
  jackson+=("$jackson_dir/$name.jar")
done
classpath="$(IFS=:; echo "${jackson[*]}")"

# -- the wrapper -------------------------------------------------------------------------
wrapper_jar="$build/shoal-wrapper.jar"
sources=()
while IFS= read -r -d '' f; do sources+=("$f"); done < <(find "$here/src" -name '*.java' -print0 | sort -z)
stale=1
if [ -f "$wrapper_jar" ] && [ -z "$(find "$here/src" "$here/build.sh" -newer "$wrapper_jar" -print -quit)" ]; then
  stale=0
fi
if [ "$stale" = 1 ]; then
  mkdir -p "$build"
  work="$(mktemp -d "$build/.work.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  javac --release 17 -encoding UTF-8 -Xlint:all -Werror -cp "$classpath" -d "$work/classes" "${sources[@]}"
  jar --create --file "$work/shoal-wrapper.jar" -C "$work/classes" .
  mv -f "$work/shoal-wrapper.jar" "$wrapper_jar"   # atomic: a concurrent build sees the old or the new jar
  rm -rf "$work"
  trap - EXIT
  echo "build.sh: built $wrapper_jar" >&2
fi

# -- a model -----------------------------------------------------------------------------
if [ -z "$model_src" ]; then
  echo "$wrapper_jar:$classpath"
  exit 0
fi
[ -d "$model_src" ] || fail "--model $model_src is not a folder"
model_sources=()
while IFS= read -r -d '' f; do model_sources+=("$f"); done < <(find "$model_src" -name '*.java' -print0 | sort -z)
[ "${#model_sources[@]}" -gt 0 ] || fail "no .java files under $model_src"
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/shoal-java-model.XXXXXX")"
trap 'rm -rf "$work"' EXIT
javac --release 17 -encoding UTF-8 -Xlint:all -cp "$wrapper_jar:$classpath" -d "$work/classes" "${model_sources[@]}"
# Resources (anything but sources) travel in the jar too, where the model finds them on its classpath.
(cd "$model_src" && find . -type f ! -name '*.java' -exec cp --parents {} "$work/classes/" \;)
jar --create --file "$work/$jar_name" -C "$work/classes" .
cp -f "$wrapper_jar" "${jackson[@]}" "$out/"
mv -f "$work/$jar_name" "$out/$jar_name"
echo "build.sh: built $out/$jar_name (run: java -cp \"$out/*\" MAIN_CLASS)" >&2
