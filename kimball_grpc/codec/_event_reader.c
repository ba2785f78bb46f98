/* The events of a serialized TrackEventsRequest, read in C (kimball_grpc/codec/proto_mapping.py).
 *
 * Why C: reading each event's six fields through the protobuf library's Python objects
 * costs about half a microsecond per event, a tenth of what the server spends on one;
 * reading the bytes here costs a fraction of that.
 *
 * The input is what the protobuf library serialized from a message it parsed (so strings
 * are valid UTF-8, and each known field appears once, in field-number order, with its
 * declared wire type). This reader takes what it fully understands and otherwise answers
 * None, so that the caller reads the message through the library instead: a group, a
 * malformed or truncated field, a field number protobuf forbids, a second occurrence of a
 * field, a string that is not UTF-8. Fields of an unknown number, or of a known number with
 * another wire type (which the library keeps as unknown fields), are skipped, as the
 * library's reader ignores them.
 *
 *   message TrackEventsRequest { repeated Event events = 1; }
 *   message Event {
 *     string namespace = 1; string event_name = 2; string user_id = 3;
 *     optional double value = 4; google.protobuf.Timestamp datetime = 5;
 *     bool ensure_goal = 6;
 *   }
 *   message Timestamp { int64 seconds = 1; int32 nanos = 2; }
 *
 * Each event becomes the tuple (event_name, user_id, namespace, value or None, datetime or
 * None, ensure_goal); a datetime is made by the caller's function of (seconds, nanos),
 * whose exception, if it raises, is this call's.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { VARINT = 0, I64 = 1, LEN = 2, SGROUP = 3, EGROUP = 4, I32 = 5 };

/* A cursor over bytes; ``bad`` is set once something cannot be read (then: None). */
typedef struct {
    const unsigned char *at, *end;
    int bad;
} Reader;

static uint64_t read_varint(Reader *r) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->at >= r->end) break;
        unsigned char byte = *r->at++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return value;
    }
    r->bad = 1;
    return 0;
}

/* A field's key: its number and wire type; ``bad`` set for a number protobuf forbids (0,
 * or past 2**29 - 1), which the library refuses to parse. */
#define MAX_FIELD_NUMBER ((UINT64_C(1) << 29) - 1)
static uint64_t read_key(Reader *r, int *type) {
    uint64_t key = read_varint(r);
    uint64_t number = key >> 3;
    if (number == 0 || number > MAX_FIELD_NUMBER) r->bad = 1;
    *type = (int)(key & 7);
    return number;
}

/* The bytes of a length-delimited field; NULL (``bad`` set) if they run past the end. */
static const unsigned char *read_len(Reader *r, Py_ssize_t *size) {
    uint64_t n = read_varint(r);
    if (r->bad || n > (uint64_t)(r->end - r->at)) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *start = r->at;
    r->at += n;
    *size = (Py_ssize_t)n;
    return start;
}

/* Skip a field's value of wire type ``type``; groups are left to the library. */
static void skip(Reader *r, int type) {
    Py_ssize_t size;
    switch (type) {
    case VARINT: read_varint(r); return;
    case I64: size = 8; break;
    case I32: size = 4; break;
    case LEN: read_len(r, &size); return;
    default: r->bad = 1; return;
    }
    if (r->end - r->at < size) r->bad = 1;
    else r->at += size;
}

/* A batch repeats its namespace and names: each distinct one (up to CACHE_SIZE) is made
 * once per call, and the same object handed out again (cheaper, and later dict lookups
 * find it by identity). User ids are mostly distinct: made each time. */
#define CACHE_SIZE 16
typedef struct {
    PyObject *text[CACHE_SIZE];
    int used;
} TextCache;

static PyObject *text_of(TextCache *cache, const unsigned char *bytes, Py_ssize_t size) {
    for (int i = 0; i < cache->used; i++) {
        PyObject *t = cache->text[i];
        /* Cached strings are made from UTF-8 bytes: compact, and their UTF-8 kept
         * (ASCII) or compared through it. */
        Py_ssize_t length;
        const char *utf8 = PyUnicode_AsUTF8AndSize(t, &length);
        if (utf8 == NULL) return NULL;
        if (length == size && memcmp(utf8, bytes, size) == 0) return Py_NewRef(t);
    }
    PyObject *t = PyUnicode_DecodeUTF8((const char *)bytes, size, "strict");
    if (t != NULL && cache->used < CACHE_SIZE) {
        Py_INCREF(t);
        cache->text[cache->used++] = t;
    }
    return t;
}

static void cache_clear(TextCache *cache) {
    for (int i = 0; i < cache->used; i++) Py_DECREF(cache->text[i]);
    cache->used = 0;
}

/* One Event as read off the wire: where its strings are, and its other fields. */
typedef struct {
    const unsigned char *text[3]; /* namespace, event_name, user_id */
    Py_ssize_t size[3];
    int has_value, has_datetime, seen;
    double value;
    int64_t seconds;
    int32_t nanos;
    int ensure_goal;
} EventWire;

static void read_timestamp(Reader *r, EventWire *e) {
    int seen = 0;
    while (r->at < r->end && !r->bad) {
        int type;
        uint64_t number = read_key(r, &type);
        if (r->bad) return;
        if ((number == 1 || number == 2) && type == VARINT) {
            if (seen & (1 << number)) { r->bad = 1; return; }
            seen |= 1 << number;
            uint64_t v = read_varint(r);
            if (number == 1) e->seconds = (int64_t)v;
            else e->nanos = (int32_t)(uint32_t)v;
        } else {
            skip(r, type);
        }
    }
}

static void read_event(Reader *r, EventWire *e) {
    memset(e, 0, sizeof *e);
    while (r->at < r->end && !r->bad) {
        int type;
        uint64_t number = read_key(r, &type);
        if (r->bad) return;
        int expected = number >= 1 && number <= 3 ? LEN
                       : number == 4             ? I64
                       : number == 5             ? LEN
                       : number == 6             ? VARINT
                                                 : -1;
        if (type != expected) {
            skip(r, type);
            continue;
        }
        if (e->seen & (1 << number)) { /* a second occurrence: the library's rules apply */
            r->bad = 1;
            return;
        }
        e->seen |= 1 << number;
        if (number <= 3) {
            e->text[number - 1] = read_len(r, &e->size[number - 1]);
        } else if (number == 4) {
            if (r->end - r->at < 8) { r->bad = 1; return; }
            uint64_t bits = 0;
            for (int i = 7; i >= 0; i--) bits = (bits << 8) | r->at[i];
            memcpy(&e->value, &bits, sizeof bits);
            e->has_value = 1;
            r->at += 8;
        } else if (number == 5) {
            Py_ssize_t size;
            const unsigned char *bytes = read_len(r, &size);
            if (bytes == NULL) return;
            Reader inner = {bytes, bytes + size, 0};
            read_timestamp(&inner, e);
            if (inner.bad) { r->bad = 1; return; }
            e->has_datetime = 1;
        } else {
            e->ensure_goal = read_varint(r) != 0;
        }
    }
}

/* The tuple of one event; NULL with an exception. */
static PyObject *event_tuple(const EventWire *e, TextCache *names, PyObject *make_datetime) {
    static const unsigned char empty = 0;
    PyObject *tuple = PyTuple_New(6);
    if (tuple == NULL) return NULL;
    /* (event_name, user_id, namespace, value, datetime, ensure_goal); a slot left NULL on
     * an error is fine to release with the tuple. */
    PyObject *item = text_of(names, e->text[1] ? e->text[1] : &empty, e->size[1]);
    if (item == NULL) goto fail;
    PyTuple_SET_ITEM(tuple, 0, item);
    item = PyUnicode_DecodeUTF8(e->text[2] ? (const char *)e->text[2] : "", e->size[2], "strict");
    if (item == NULL) goto fail;
    PyTuple_SET_ITEM(tuple, 1, item);
    item = text_of(names, e->text[0] ? e->text[0] : &empty, e->size[0]);
    if (item == NULL) goto fail;
    PyTuple_SET_ITEM(tuple, 2, item);
    item = e->has_value ? PyFloat_FromDouble(e->value) : Py_NewRef(Py_None);
    if (item == NULL) goto fail;
    PyTuple_SET_ITEM(tuple, 3, item);
    item = e->has_datetime ? PyObject_CallFunction(make_datetime, "Li", (long long)e->seconds,
                                                   (int)e->nanos)
                           : Py_NewRef(Py_None);
    if (item == NULL) goto fail;
    PyTuple_SET_ITEM(tuple, 4, item);
    PyTuple_SET_ITEM(tuple, 5, Py_NewRef(e->ensure_goal ? Py_True : Py_False));
    return tuple;
fail:
    Py_DECREF(tuple);
    return NULL;
}

PyDoc_STRVAR(read_events_doc,
"read_events(data, make_datetime) -> list[tuple] | None\n\n"
"The events of ``data``, a serialized TrackEventsRequest, each as the tuple (event_name,\n"
"user_id, namespace, value or None, datetime or None, ensure_goal), the datetime made by\n"
"``make_datetime(seconds, nanos)``; None if ``data`` holds what only the protobuf library\n"
"reads (see the module's source).");

static PyObject *read_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "read_events takes 2 arguments, not %zd", nargs);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *make_datetime = args[1];
    PyObject *events = PyList_New(0);
    TextCache names = {.used = 0};
    Reader r = {view.buf, (const unsigned char *)view.buf + view.len, 0};
    if (events == NULL) goto done;
    while (r.at < r.end && !r.bad) {
        int type;
        uint64_t number = read_key(&r, &type);
        if (r.bad) break;
        if (number != 1 || type != LEN) { /* not an event: skipped, as the library does */
            skip(&r, type);
            continue;
        }
        Py_ssize_t size;
        const unsigned char *bytes = read_len(&r, &size);
        if (bytes == NULL) break;
        Reader inner = {bytes, bytes + size, 0};
        EventWire e;
        read_event(&inner, &e);
        if (inner.bad) {
            r.bad = 1;
            break;
        }
        PyObject *event = event_tuple(&e, &names, make_datetime);
        if (event == NULL || PyList_Append(events, event) < 0) {
            Py_XDECREF(event);
            /* Text that is not UTF-8: the library's reader says what is wrong. */
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                r.bad = 1;
                break;
            }
            Py_CLEAR(events);
            goto done;
        }
        Py_DECREF(event);
    }
    if (r.bad) {
        Py_DECREF(events);
        events = Py_NewRef(Py_None);
    }
done:
    cache_clear(&names);
    PyBuffer_Release(&view);
    return events;
}

static PyMethodDef event_reader_methods[] = {
    {"read_events", (PyCFunction)(void (*)(void))read_events, METH_FASTCALL, read_events_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef event_reader_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kimball_grpc.codec._event_reader",
    .m_doc = "The events of a serialized TrackEventsRequest, read in C (see proto_mapping.py).",
    .m_size = -1,
    .m_methods = event_reader_methods,
};

PyMODINIT_FUNC PyInit__event_reader(void) { return PyModule_Create(&event_reader_module); }
