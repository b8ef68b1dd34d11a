/* core's text helpers: the UTF-8 validator (overlongs, surrogates, range), the
 * streaming tail check, the repair that makes any bytes valid JSON text, and
 * the growable buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "test.h"

TEST_CASE(utf8_decode) {
    uint32_t cp = 0;
    CHECK(lloco_utf8_decode((const uint8_t *)"A", 1, &cp) == 1 && cp == 'A');
    CHECK(lloco_utf8_decode((const uint8_t *)"\xC3\xA9", 2, &cp) == 2 && cp == 0xE9);
    CHECK(lloco_utf8_decode((const uint8_t *)"\xE6\x97\xA5", 3, &cp) == 3 && cp == 0x65E5);
    CHECK(lloco_utf8_decode((const uint8_t *)"\xF0\x9F\x98\x80", 4, &cp) == 4 && cp == 0x1F600);
    CHECK(lloco_utf8_decode((const uint8_t *)"\xC0\xAF", 2, NULL) == 0);     /* overlong */
    CHECK(lloco_utf8_decode((const uint8_t *)"\xED\xA0\x80", 3, NULL) == 0); /* surrogate */
    CHECK(lloco_utf8_decode((const uint8_t *)"\xF4\x90\x80\x80", 4, NULL) == 0); /* > U+10FFFF */
    CHECK(lloco_utf8_decode((const uint8_t *)"\xE6\x97", 2, NULL) == 0);     /* cut short */
    CHECK(lloco_utf8_decode((const uint8_t *)"\x80", 1, NULL) == 0);
    CHECK(lloco_utf8_incomplete_tail("ab\xE6\x97", 4) == 2);
    CHECK(lloco_utf8_incomplete_tail("ab\xE6\x97\xA5", 5) == 0);
}

TEST_CASE(utf8_repair) {
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"plain", 5, "plain"},
        {"caf\xC3\xA9", 5, "caf\xC3\xA9"},
        {"a\xFF" "b", 3, "a\xEF\xBF\xBD" "b"},
        {"\xE6\x97", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"x\xC0\xAFy", 4, "x\xEF\xBF\xBD\xEF\xBF\xBDy"},
        {"", 0, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *r = lloco_utf8_repair(cases[i].in, cases[i].n);
        CHECKF(r && !strcmp(r, cases[i].out), "case %zu: got '%s'", i, r ? r : "(null)");
        free(r);
    }
    /* a NUL would end the C string: it is replaced too */
    char *r = lloco_utf8_repair("a\0b", 3);
    CHECK(r && !strcmp(r, "a\xEF\xBF\xBD" "b"));
    free(r);
}

TEST_CASE(buf_append_printf) {
    lloco_buf b = {0};
    CHECK_OK(lloco_buf_append(&b, "", 0));
    CHECK(b.data && b.len == 0 && b.data[0] == '\0');
    for (int i = 0; i < 1000; i++) CHECK_OK(lloco_buf_printf(&b, "%d,", i));
    CHECK_OK(lloco_buf_append(&b, "end\0x", 5));
    CHECK(b.len == 3890 + 5);
    CHECK(!strncmp(b.data, "0,1,2,", 6) && !memcmp(b.data + b.len - 9, "999,end\0x", 9));
    CHECK(b.data[b.len] == '\0');
    lloco_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
}
