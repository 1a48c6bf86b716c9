// Lists the functions of the headers under a directory that are longer than
// a limit (the lines from the first line of the declaration to the closing
// brace), and fails when there are any:
//
//   einmoe_function_lengths <include dir> <max lines>
//
// A light C++ scanner: comments, string and character literals and
// preprocessor lines are skipped; a brace at namespace or class scope opens
// a function body when the declaration before it has a parameter list and
// is not a namespace, class, struct, union or enum. Lambdas and local
// classes count toward the function they are in.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Finding {
  std::string file, name;
  int first, last;
};

/// The source with comments, literals and preprocessor lines blanked out
/// (newlines kept, so line numbers stay).
std::string code_only(const std::string& s) {
  std::string out = s;
  std::size_t i = 0;
  const std::size_t n = s.size();
  bool line_start = true;
  while (i < n) {
    const char c = s[i];
    if (line_start) {
      std::size_t j = i;
      while (j < n && (s[j] == ' ' || s[j] == '\t')) ++j;
      if (j < n && s[j] == '#') {  // a preprocessor line, with its continuations
        while (j < n && !(s[j] == '\n' && s[j - 1] != '\\')) out[j] = ' ', ++j;
        i = j;
        continue;
      }
    }
    line_start = c == '\n';
    if (c == '/' && i + 1 < n && s[i + 1] == '/') {
      while (i < n && s[i] != '\n') out[i++] = ' ';
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
      while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/')) {
        if (s[i] != '\n') out[i] = ' ';
        ++i;
      }
      if (i + 1 < n) out[i] = out[i + 1] = ' ', i += 2;
    } else if (c == 'R' && i + 1 < n && s[i + 1] == '"') {  // raw string R"delim( ... )delim"
      const std::size_t open = s.find('(', i);
      const std::string close = ")" + s.substr(i + 2, open - i - 2) + "\"";
      const std::size_t end = s.find(close, open);
      const std::size_t stop = end == std::string::npos ? n : end + close.size();
      for (; i < stop; ++i)
        if (s[i] != '\n') out[i] = ' ';
    } else if (c == '"' || (c == '\'' && !(i > 0 && std::isxdigit(static_cast<unsigned char>(s[i - 1]))))) {
      out[i++] = ' ';
      while (i < n && s[i] != c) {
        if (s[i] == '\\') out[i++] = ' ';
        if (i < n && s[i] != '\n') out[i] = ' ';
        ++i;
      }
      if (i < n) out[i++] = ' ';
    } else {
      ++i;
    }
  }
  return out;
}

bool has_word(const std::string& text, const std::string& word) {
  std::size_t p = 0;
  while ((p = text.find(word, p)) != std::string::npos) {
    const bool left = p == 0 || !(std::isalnum(static_cast<unsigned char>(text[p - 1])) || text[p - 1] == '_');
    const std::size_t e = p + word.size();
    const bool right = e >= text.size() || !(std::isalnum(static_cast<unsigned char>(text[e])) || text[e] == '_');
    if (left && right) return true;
    p = e;
  }
  return false;
}

/// The declaration without its template<...> heads (whose "class" is no class).
std::string without_template_heads(std::string d) {
  for (std::size_t p; (p = d.find("template")) != std::string::npos;) {
    std::size_t q = d.find('<', p);
    if (q == std::string::npos) break;
    int depth = 0;
    for (; q < d.size(); ++q) {
      if (d[q] == '<') ++depth;
      if (d[q] == '>' && --depth == 0) break;
    }
    d.erase(p, q + 1 - p);
  }
  return d;
}

void scan(const fs::path& file, int limit, std::vector<Finding>& found) {
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string code = code_only(ss.str());
  enum Kind { scope, body };
  std::vector<Kind> stack;          // what each open brace opened
  std::vector<std::size_t> starts;  // where each body's declaration began
  std::size_t decl_start = 0;       // the first character after the last ; { } at scope level
  auto line_of = [&](std::size_t pos) {
    return 1 + static_cast<int>(std::count(code.begin(), code.begin() + static_cast<std::ptrdiff_t>(pos), '\n'));
  };
  for (std::size_t i = 0; i < code.size(); ++i) {
    const char c = code[i];
    const bool at_scope = stack.empty() || stack.back() == scope;
    if (c == '{') {
      if (at_scope) {
        const std::string decl = without_template_heads(code.substr(decl_start, i - decl_start));
        const bool is_scope = has_word(decl, "namespace") || has_word(decl, "class") || has_word(decl, "struct") ||
                              has_word(decl, "union") || has_word(decl, "enum") ||
                              decl.find("extern") != std::string::npos;
        // a parameter list, and no '=' before it (a variable's initializer), unless an operator's
        const std::size_t paren = decl.find('(');
        const std::string before = decl.substr(0, paren);
        const bool is_function = !is_scope && paren != std::string::npos &&
                                 (before.find('=') == std::string::npos || has_word(before, "operator"));
        stack.push_back(is_function ? body : (is_scope ? scope : body));
        starts.push_back(is_function ? decl_start : std::string::npos);
        decl_start = i + 1;
      } else {
        stack.push_back(body);
        starts.push_back(std::string::npos);
      }
    } else if (c == '}') {
      if (stack.empty()) continue;
      const std::size_t start = starts.back();
      stack.pop_back();
      starts.pop_back();
      if (start != std::string::npos) {
        std::size_t first = start;
        while (first < i && std::isspace(static_cast<unsigned char>(code[first]))) ++first;
        const int a = line_of(first), b = line_of(i);
        if (b - a + 1 > limit) {
          std::string decl = code.substr(first, code.find('(', first) - first);
          decl.erase(std::remove(decl.begin(), decl.end(), '\n'), decl.end());
          const std::size_t sp = decl.find_last_of(" :*&");
          found.push_back({file.string(), sp == std::string::npos ? decl : decl.substr(sp + 1), a, b});
        }
      }
      if (stack.empty() || stack.back() == scope) decl_start = i + 1;
    } else if (c == ';' && at_scope) {
      decl_start = i + 1;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: einmoe_function_lengths <include dir> <max lines>\n");
    return 2;
  }
  const int limit = std::stoi(argv[2]);
  std::vector<Finding> found;
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(argv[1]))
    if (e.is_regular_file() && e.path().extension() == ".hpp") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) scan(f, limit, found);
  for (const auto& f : found)
    std::printf("%s:%d: %s is %d lines long (at most %d)\n", f.file.c_str(), f.first, f.name.c_str(),
                f.last - f.first + 1, limit);
  std::printf("%zu headers, %zu functions longer than %d lines\n", files.size(), found.size(), limit);
  return found.empty() ? 0 : 1;
}
