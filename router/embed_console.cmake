# Writes the console page (router/console/console.html) into a header as a raw string literal,
# so the router serves it from memory with no files or network at run time.
#   cmake -DIN=console.html -DOUT=console_html.h -P embed_console.cmake
file(READ "${IN}" content)
string(FIND "${content}" ")ssconsole\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )ssconsole\"")
endif()
file(WRITE "${OUT}.tmp"
  "// Generated from router/console/console.html by router/embed_console.cmake.\n"
  "#pragma once\n"
  "inline constexpr char kConsoleHtml[] = R\"ssconsole(${content})ssconsole\";\n")
file(RENAME "${OUT}.tmp" "${OUT}")
