import { page } from "../ui.js";
export function list() { return page("members", { intro: "coming" }); }
