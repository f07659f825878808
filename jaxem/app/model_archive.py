"""Reading a model file without trusting it: the checks :func:`jaxem.load` makes before a byte of
the file becomes an array.

A model file is a zip archive (``numpy.savez``) of ``.npy`` members. Nothing in it is believed:

- the path must name a regular file; a FIFO, a device or a folder is refused before it is read, so
  it cannot block;
- a member is read only when the metadata names it, and only after its zip entry (compression,
  encryption flag, sizes, place in the file) and its ``.npy`` header (dtype, shape) agree with
  each other and with the file's size; so a file cannot make ``load`` allocate more than a small
  multiple of its own size (``numpy.savez`` stores members uncompressed: one byte read per byte
  on disk);
- the metadata's JSON is parsed only when it is nested at most :data:`MAX_JSON_DEPTH` deep.

Whatever else the zip and ``.npy`` readers raise on a damaged file (a bad CRC, a garbled header,
a seek outside the file) the caller turns into one ``ValueError`` naming the file
(:func:`describe`).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile

import numpy as np

META = "__jaxem__"
MAX_JSON_DEPTH = 64
# A deflated member (jaxem writes none) may expand to this many times the file's size, plus _SLACK.
_EXPANSION = 16
_SLACK = 1 << 20
_NPY_HEADER_LIMIT = 10_000  # numpy's own default
_KINDS = "biufcUS"  # numbers, booleans and strings; never objects, records or void
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class Refused(ValueError):
    """A model file refused; the message names the file and says why."""


def corrupted(path: str, detail: str) -> Refused:
    return Refused(f"{path}: truncated or corrupted jaxem model file ({detail})")


def describe(err: BaseException) -> str:
    """A reader's exception as a short detail for :func:`corrupted`."""
    if isinstance(err, KeyError):
        return f"missing {err}"
    text = str(err)
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def open_regular(path: str):
    """``path`` opened for binary reading; refused unless it is a regular file.

    The file is looked at before it is opened, and opened without blocking (a FIFO put in its
    place meanwhile is refused too). ``FileNotFoundError`` and ``PermissionError`` pass through.
    """
    refused = Refused(f"{path}: not a jaxem model file (not a regular file)")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise refused
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def json_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in JSON ``text`` (brackets inside strings do not count)."""
    codes = np.frombuffer(_STRING.sub("0", text).encode("ascii", "replace"), np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


class ModelArchive:
    """The members of an open model file, each read on request after the checks above.

    Args:
        path: the file's name, for messages.
        file: the file, opened by :func:`open_regular` (closed by the caller).
    """

    def __init__(self, path: str, file):
        self.path = path
        self.size = os.fstat(file.fileno()).st_size
        if file.read(4) != b"PK\x03\x04":
            raise Refused(f"{path}: not a jaxem model file (not an .npz archive)")
        file.seek(0)
        self._zip = zipfile.ZipFile(file)
        self._budget = _EXPANSION * self.size + _SLACK
        self._arrays: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self._zip.close()

    def corrupted(self, detail: str) -> Refused:
        return corrupted(self.path, detail)

    def metadata(self) -> dict:
        """The JSON metadata (``__jaxem__.npy``: a 0-d string array)."""
        name = META + ".npy"
        if name not in self._zip.namelist():
            raise Refused(f"{self.path}: not a jaxem model file (an .npz archive without jaxem's "
                          "metadata)")
        arr = self.array(META)
        if arr.shape != () or arr.dtype.kind != "U":
            raise self.corrupted(f"the metadata is a {arr.dtype} array of shape {arr.shape}")
        text = str(arr[()])
        if json_depth(text) > MAX_JSON_DEPTH:
            raise self.corrupted(f"the metadata nests deeper than {MAX_JSON_DEPTH} levels")
        meta = json.loads(text)
        if not isinstance(meta, dict):
            raise Refused(f"{self.path}: not a jaxem model file (metadata format None)")
        return meta

    def array(self, key: str) -> np.ndarray:
        """The array stored under ``key`` (member ``key + ".npy"``), read once."""
        if not isinstance(key, str):
            raise self.corrupted(f"an array key is {key!r}, not a string")
        if key not in self._arrays:
            self._arrays[key] = self._read(key + ".npy")
        return self._arrays[key]

    def _entry(self, name: str) -> zipfile.ZipInfo:
        """The zip entry of member ``name``, refused unless it can be read within the budget."""
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise self.corrupted(f"no member {name!r}") from None
        if info.flag_bits & 0x1:
            raise self.corrupted(f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise self.corrupted(f"member {name!r} is stored with {info.compress_size} bytes "
                                     f"but declares {info.file_size}")
        elif info.compress_type != zipfile.ZIP_DEFLATED:
            raise self.corrupted(f"member {name!r} uses compression method {info.compress_type}")
        if not 0 <= info.header_offset <= self.size - info.compress_size:
            raise self.corrupted(f"member {name!r} runs past the end of the file")
        if info.file_size > self._budget:
            raise self.corrupted(f"member {name!r} declares {info.file_size} bytes, more than a "
                                 f"file of {self.size} bytes can hold")
        self._budget -= info.file_size
        return info

    def _read(self, name: str) -> np.ndarray:
        info = self._entry(name)
        fmt = np.lib.format
        with self._zip.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, _NPY_HEADER_LIMIT)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, _NPY_HEADER_LIMIT)
            else:
                raise self.corrupted(f"member {name!r} has .npy format version {version}")
            if dtype.kind not in _KINDS or dtype.fields is not None or dtype.itemsize == 0:
                raise self.corrupted(f"member {name!r} holds dtype {dtype}")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            if f.tell() + nbytes != info.file_size:
                raise self.corrupted(f"member {name!r} declares shape {shape} of {dtype} "
                                     f"({nbytes} bytes) but holds {info.file_size - f.tell()}")
            data = f.read(nbytes)
            if len(data) != nbytes or f.read(1):  # reading to the end checks the CRC
                raise self.corrupted(f"member {name!r} is not {nbytes} bytes long")
        order = "F" if fortran else "C"
        if count == 0:
            return np.empty(shape, dtype, order=order)
        return np.frombuffer(bytearray(data), dtype, count).reshape(shape, order=order)
