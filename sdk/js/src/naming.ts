/**
 * The documentation writes the API's fields both ways (`track_opens` and `trackOpens`): the SDK
 * accepts either for its own fields and sends the API's snake_case names. It never renames the
 * keys inside your own data (USER_DATA_FIELDS: custom_fields, personalization, metadata,
 * headers), which are sent exactly as given.
 */
import { USER_DATA_FIELDS } from "./generated.js";

const USER_DATA: ReadonlySet<string> = new Set(USER_DATA_FIELDS);

type Camel<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<Camel<Tail>>}`
  : S;

type Plain<T> = T extends string | number | boolean | null | undefined ? T : never;

/**
 * A request body whose own fields may be written in snake_case or camelCase; the values of the
 * user-data fields keep their keys as they are.
 */
export type Input<T> = [Plain<T>] extends [never]
  ? T extends Array<infer Item>
    ? Array<Input<Item>>
    : T extends object
      ? string extends keyof T
        ? T
        : { [K in keyof T]?: Field<K, T[K]> } & {
            [K in keyof T as K extends string ? Camel<K> : never]?: Field<K, T[K]>;
          }
      : T
  : T;

type Field<K, V> = K extends (typeof USER_DATA_FIELDS)[number] ? V : InputUnion<V>;
type InputUnion<V> = V extends unknown ? Input<V> : never;

export function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** `body` with the SDK's own keys in the API's names; user data untouched. */
export function toApi(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toApi);
  if (!isPlainObject(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    if (item === undefined) continue;
    const name = snakeCase(key);
    out[name] = USER_DATA.has(name) ? item : toApi(item);
  }
  return out;
}
